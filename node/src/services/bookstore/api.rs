//! The seed's public API shapes, so its client works unchanged: query
//! parameters in, `{"status", "validation_code", "message", ...}` out.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::model::{Book, BookError};

/// `GET /search` and `GET /lookup` on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    pub status: String,
    pub validation_code: u16,
    pub message: String,
    pub item: Vec<Book>,
}

/// `GET /buy` on success (`frontend` is always empty, as in the seed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bought {
    pub status: String,
    pub validation_code: u16,
    pub message: String,
    pub frontend: Vec<serde_json::Value>,
}

/// Any failure; served with HTTP status `validation_code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub status: String,
    pub validation_code: u16,
    pub message: String,
}

pub fn items(item: Vec<Book>) -> Items {
    Items {
        status: "Success".into(),
        validation_code: 200,
        message: String::new(),
        item,
    }
}

pub fn bought(book: &Book) -> Bought {
    Bought {
        status: "Success".into(),
        validation_code: 200,
        message: format!("Bought book {}: {}", book.id, book.title),
        frontend: Vec::new(),
    }
}

pub fn failed(e: &BookError) -> Failed {
    Failed {
        status: "Failed".into(),
        validation_code: e.status(),
        message: e.to_string(),
    }
}

/// The `id` parameter: present and a whole number.
pub fn id_param(params: &HashMap<String, String>) -> Result<u32, BookError> {
    let raw = params
        .get("id")
        .ok_or_else(|| BookError::BadRequest("missing parameter `id` (e.g. ?id=1)".into()))?;
    raw.trim().parse::<u32>().map_err(|_| {
        BookError::BadRequest(format!(
            "parameter `id` must be a whole number, not `{raw}`"
        ))
    })
}

/// The `topic` parameter: present and not blank.
pub fn topic_param(params: &HashMap<String, String>) -> Result<String, BookError> {
    match params.get("topic").map(|t| t.trim()) {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        _ => Err(BookError::BadRequest(
            "missing parameter `topic` (e.g. ?topic=distributed%20systems)".into(),
        )),
    }
}

/// The books on `topic` (exact, ignoring case), by id; unknown topic → 404.
pub fn search(books: &[Book], topic: &str) -> Result<Vec<Book>, BookError> {
    let found: Vec<Book> = books
        .iter()
        .filter(|b| b.topic.eq_ignore_ascii_case(topic))
        .cloned()
        .collect();
    if found.is_empty() {
        return Err(BookError::UnknownTopic(topic.to_owned()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::bookstore::model::CatalogFile;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn success_shapes_are_the_seeds() {
        let books = CatalogFile::built_in().initial_books();
        let v = serde_json::to_value(items(vec![books[0].clone()])).unwrap();
        assert_eq!(v["status"], "Success");
        assert_eq!(v["validation_code"], 200);
        assert_eq!(v["message"], "");
        let item = &v["item"][0];
        for field in ["id", "title", "count", "cost", "topic"] {
            assert!(!item[field].is_null(), "{field} in {item}");
        }
        assert_eq!(item["count"], 100);
        let v = serde_json::to_value(bought(&books[1])).unwrap();
        assert_eq!(v["frontend"], serde_json::json!([]));
        assert!(v["message"].as_str().unwrap().contains("RPCs for Dummies."));
    }

    #[test]
    fn bad_parameters_get_clear_errors() {
        assert_eq!(id_param(&params(&[("id", "3")])), Ok(3));
        let missing = id_param(&params(&[])).unwrap_err();
        assert_eq!(missing.status(), 400);
        assert!(missing.to_string().contains("missing parameter `id`"));
        for bad in ["abc", "-1", "1.5", ""] {
            let e = id_param(&params(&[("id", bad)])).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        let f = failed(&id_param(&params(&[("id", "x")])).unwrap_err());
        assert_eq!((f.status.as_str(), f.validation_code), ("Failed", 400));
        assert!(topic_param(&params(&[("topic", "  ")])).is_err());
        assert_eq!(
            topic_param(&params(&[("topic", "graduate school")])).unwrap(),
            "graduate school"
        );
    }

    #[test]
    fn search_finds_a_topics_books() {
        let books = CatalogFile::built_in().initial_books();
        let ds = search(&books, "distributed systems").unwrap();
        assert_eq!(ds.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 5]);
        assert_eq!(search(&books, "Graduate School").unwrap().len(), 4);
        assert_eq!(search(&books, "cooking").unwrap_err().status(), 404);
    }
}
