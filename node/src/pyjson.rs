//! JSON as Python's `json.dumps` writes it, for replies the seeds' clients
//! compare byte for byte: `", "` and `": "` between items (or, indented,
//! four spaces per level, as flask-restful answers in debug mode), and
//! every character outside printable ASCII escaped as `\uXXXX`
//! (`ensure_ascii`, the default), in lowercase hex, astral characters as
//! surrogate pairs.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

/// `json.dumps(value)`.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    write(value, Layout::Compact)
}

/// `json.dumps(value, indent=4)`.
pub fn dumps_indented<T: Serialize + ?Sized>(value: &T) -> String {
    write(value, Layout::Pretty(PrettyFormatter::with_indent(b"    ")))
}

fn write<T: Serialize + ?Sized>(value: &T, layout: Layout) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Python { layout });
    value
        .serialize(&mut ser)
        .expect("a value of plain data serializes");
    String::from_utf8(out).expect("the output is ASCII")
}

/// A dict in insertion order, as Python keeps it (serde_json's own maps
/// sort their keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dict<V>(pub Vec<(String, V)>);

impl<V: Serialize> Serialize for Dict<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

enum Layout {
    Compact,
    Pretty(PrettyFormatter<'static>),
}

struct Python {
    layout: Layout,
}

impl Formatter for Python {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => w.write_all(b"["),
            Layout::Pretty(p) => p.begin_array(w),
        }
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => w.write_all(b"]"),
            Layout::Pretty(p) => p.end_array(w),
        }
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact if first => Ok(()),
            Layout::Compact => w.write_all(b", "),
            Layout::Pretty(p) => p.begin_array_value(w, first),
        }
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => Ok(()),
            Layout::Pretty(p) => p.end_array_value(w),
        }
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => w.write_all(b"{"),
            Layout::Pretty(p) => p.begin_object(w),
        }
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => w.write_all(b"}"),
            Layout::Pretty(p) => p.end_object(w),
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact if first => Ok(()),
            Layout::Compact => w.write_all(b", "),
            Layout::Pretty(p) => p.begin_object_key(w, first),
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => w.write_all(b": "),
            Layout::Pretty(p) => p.begin_object_value(w),
        }
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        match &mut self.layout {
            Layout::Compact => Ok(()),
            Layout::Pretty(p) => p.end_object_value(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_as_python_writes() {
        // The expected texts are what CPython 3's json.dumps prints.
        // Keys in insertion order (serde_json's own maps would sort them).
        let data = Dict(vec![
            ("user_name".into(), json!("Ann")),
            ("locker_id".into(), json!(3)),
        ]);
        let response = Dict(vec![("data".to_owned(), data)]);
        assert_eq!(
            dumps(&Dict(vec![("response".into(), response)])),
            r#"{"response": {"data": {"user_name": "Ann", "locker_id": 3}}}"#
        );
        assert_eq!(
            dumps(&json!({"a": [1, 2], "b": null})),
            r#"{"a": [1, 2], "b": null}"#
        );
        assert_eq!(
            dumps(&json!([
                "Ольга",
                "\u{1F600}",
                "tab\there",
                "del\u{7f}",
                "q\"\\"
            ])),
            r#"["\u041e\u043b\u044c\u0433\u0430", "\ud83d\ude00", "tab\there", "del\u007f", "q\"\\"]"#
        );
        assert_eq!(
            dumps_indented(&Dict(vec![(
                "users".to_owned(),
                Dict(vec![("Zoe".to_owned(), None), ("Ann".to_owned(), Some(2))])
            )])),
            "{\n    \"users\": {\n        \"Zoe\": null,\n        \"Ann\": 2\n    }\n}"
        );
        assert_eq!(
            dumps_indented(&json!({"users": {}})),
            "{\n    \"users\": {}\n}"
        );
        assert_eq!(dumps_indented("Error 'user_name'"), "\"Error 'user_name'\"");
    }
}
