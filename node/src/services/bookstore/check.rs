//! The bookstore's invariants, checked on what the replicas hold (pure; the
//! CLI's `bookstore check` and the tests gather the data over RPC):
//!
//! - stock never negative, and per book `initial + restocked = sold + count`;
//! - every recorded order has its sale (same id, book and cost) in the
//!   catalog, and every sale has its order;
//! - the replicas of each service agree: every book, every order.

use serde::{Deserialize, Serialize};

use super::model::{Book, Ledger, Order};

/// What one catalog replica holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogState {
    pub node: String,
    pub books: Vec<Book>,
    pub ledger: Vec<Ledger>,
    pub sales: Vec<Order>,
}

/// What one order replica holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub node: String,
    pub orders: Vec<Order>,
}

/// One check and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

fn finding(check: &str, problems: Vec<String>, fine: String) -> Finding {
    let ok = problems.is_empty();
    Finding {
        check: check.to_owned(),
        ok,
        detail: if ok {
            fine
        } else {
            let more = problems.len().saturating_sub(5);
            let mut d = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
            if more > 0 {
                d.push_str(&format!("; and {more} more"));
            }
            d
        },
    }
}

fn sorted(orders: &[Order]) -> Vec<Order> {
    let mut v = orders.to_vec();
    v.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    v
}

/// Every check on the replicas' states (the first of each list is taken
/// as the reference when comparing).
pub fn verify(catalogs: &[CatalogState], orders: &[OrderState]) -> Vec<Finding> {
    let mut out = Vec::new();

    let mut problems = Vec::new();
    for c in catalogs {
        for l in &c.ledger {
            if !l.balanced() {
                problems.push(format!(
                    "{}: book {}: {} initial + {} restocked != {} sold + {} in stock",
                    c.node, l.book, l.initial, l.restocked, l.sold, l.count
                ));
            }
        }
        for b in &c.books {
            let sold = c.sales.iter().filter(|o| o.book == b.id).count() as u64;
            match c.ledger.iter().find(|l| l.book == b.id) {
                Some(l) if l.sold == sold && l.count == b.count => {}
                _ => problems.push(format!(
                    "{}: book {}: the ledger does not match its {sold} sales",
                    c.node, b.id
                )),
            }
        }
    }
    let books: usize = catalogs.iter().map(|c| c.books.len()).sum();
    out.push(finding(
        "stock balances (never negative; initial + restocked = sold + in stock)",
        problems,
        format!("{books} books on {} catalog replicas", catalogs.len()),
    ));

    let mut problems = Vec::new();
    for pair in catalogs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.books != b.books {
            problems.push(format!(
                "{} and {} differ in books or stock",
                a.node, b.node
            ));
        }
        if sorted(&a.sales) != sorted(&b.sales) {
            problems.push(format!(
                "{} has {} sales, {} has {} (or different ones)",
                a.node,
                a.sales.len(),
                b.node,
                b.sales.len()
            ));
        }
    }
    for pair in orders.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if sorted(&a.orders) != sorted(&b.orders) {
            problems.push(format!(
                "{} has {} orders, {} has {} (or different ones)",
                a.node,
                a.orders.len(),
                b.node,
                b.orders.len()
            ));
        }
    }
    out.push(finding(
        "replicas agree (every book, every sale, every order)",
        problems,
        format!(
            "{} catalog and {} order replicas compared",
            catalogs.len(),
            orders.len()
        ),
    ));

    let mut problems = Vec::new();
    if let (Some(c), Some(o)) = (catalogs.first(), orders.first()) {
        let sales: std::collections::HashMap<&str, &Order> =
            c.sales.iter().map(|s| (s.order_id.as_str(), s)).collect();
        for order in &o.orders {
            match sales.get(order.order_id.as_str()) {
                Some(s) if s.book == order.book && s.cost == order.cost => {}
                Some(_) => problems.push(format!(
                    "order {} differs from its sale on {}",
                    order.order_id, c.node
                )),
                None => problems.push(format!(
                    "order {} has no sale on {} (no copy taken)",
                    order.order_id, c.node
                )),
            }
        }
        let recorded: std::collections::HashSet<&str> =
            o.orders.iter().map(|x| x.order_id.as_str()).collect();
        let unrecorded = c
            .sales
            .iter()
            .filter(|s| !recorded.contains(s.order_id.as_str()))
            .count();
        if unrecorded > 0 {
            problems.push(format!(
                "{unrecorded} sales on {} have no order on {} (a buy that failed midway and was not retried)",
                c.node, o.node
            ));
        }
    }
    let n = orders.first().map(|o| o.orders.len()).unwrap_or(0);
    out.push(finding(
        "every order has its sale, every sale its order",
        problems,
        format!("{n} orders"),
    ));
    out
}

/// Why a replica's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("{node}: {source}")]
    Rpc {
        node: String,
        source: crate::bus::RpcError,
    },
    #[error("{node}: bad answer: {source}")]
    BadAnswer {
        node: String,
        source: serde_json::Error,
    },
    #[error("{node}: {source}")]
    Refused {
        node: String,
        source: super::model::BookError,
    },
}

/// Asks one replica (over MQTT RPC) and unwraps its answer.
async fn ask<Q: Serialize, A: serde::de::DeserializeOwned>(
    bus: &crate::bus::Bus,
    service: &str,
    node: &str,
    request: &Q,
) -> Result<A, GatherError> {
    let node_ = || node.to_owned();
    let reply = bus
        .request(
            service,
            node,
            "request",
            request,
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|source| GatherError::Rpc {
            node: node_(),
            source,
        })?;
    reply
        .body_as::<Result<A, super::model::BookError>>()
        .map_err(|source| GatherError::BadAnswer {
            node: node_(),
            source,
        })?
        .map_err(|source| GatherError::Refused {
            node: node_(),
            source,
        })
}

/// Reads every replica's state over MQTT RPC (each must be serving).
pub async fn gather(
    bus: &crate::bus::Bus,
    catalogs: &[String],
    orders: &[String],
) -> Result<(Vec<CatalogState>, Vec<OrderState>), GatherError> {
    use super::wire::{CatalogReply, CatalogRequest, OrderReply, OrderRequest};
    let mut cats = Vec::new();
    for node in catalogs {
        let mut state = CatalogState {
            node: node.clone(),
            books: Vec::new(),
            ledger: Vec::new(),
            sales: Vec::new(),
        };
        for request in [
            CatalogRequest::Books,
            CatalogRequest::Ledger,
            CatalogRequest::Sales,
        ] {
            match ask(bus, "catalog", node, &request).await? {
                CatalogReply::Books { books } => state.books = books,
                CatalogReply::Ledger { ledger } => state.ledger = ledger,
                CatalogReply::Sales { orders } => state.sales = orders,
                CatalogReply::Outcome { .. } | CatalogReply::Placed { .. } => {}
            }
        }
        cats.push(state);
    }
    let mut ords = Vec::new();
    for node in orders {
        if let OrderReply::Orders { orders } =
            ask(bus, "order", node, &OrderRequest::Orders).await?
        {
            ords.push(OrderState {
                node: node.clone(),
                orders,
            });
        }
    }
    Ok((cats, ords))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::bookstore::model::{CatalogFile, Command};
    use crate::services::bookstore::store::{BookStore, MemStore};

    fn catalog(node: &str, store: &MemStore) -> CatalogState {
        CatalogState {
            node: node.into(),
            books: store.books().unwrap(),
            ledger: store.ledger().unwrap(),
            sales: store.orders().unwrap(),
        }
    }

    fn sold(n: usize) -> MemStore {
        let mut s = MemStore::new(&CatalogFile::built_in());
        for i in 0..n {
            s.apply(&Command::Buy {
                order_id: format!("o{i}"),
                book: 1 + (i % 7) as u32,
                restock: 10,
                now_ms: i as u64,
            })
            .unwrap();
        }
        s
    }

    #[test]
    fn equal_replicas_with_recorded_orders_pass() {
        let s = sold(20);
        let cats = [catalog("catalog-a", &s), catalog("catalog-b", &s)];
        let orders = s.orders().unwrap();
        let mut reversed = orders.clone();
        reversed.reverse();
        let ords = [
            OrderState {
                node: "order-a".into(),
                orders,
            },
            OrderState {
                node: "order-b".into(),
                orders: reversed,
            },
        ];
        let found = verify(&cats, &ords);
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|f| f.ok), "{found:?}");
    }

    #[test]
    fn a_lagging_replica_an_order_without_sale_and_a_bad_ledger_are_found() {
        let (a, b) = (sold(20), sold(19));
        let mut cats = vec![catalog("catalog-a", &a), catalog("catalog-b", &b)];
        let mut orders = a.orders().unwrap();
        orders.push(Order {
            order_id: "ghost".into(),
            book: 1,
            cost: 10,
            ts_ms: 0,
        });
        let ords = [OrderState {
            node: "order-a".into(),
            orders,
        }];
        cats[0].ledger[0].count += 1;
        let found = verify(&cats, &ords);
        assert!(found.iter().all(|f| !f.ok), "{found:?}");
        assert!(
            found[1]
                .detail
                .contains("catalog-a has 20 sales, catalog-b has 19")
        );
        assert!(found[2].detail.contains("ghost"));
    }
}
