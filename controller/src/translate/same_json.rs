//! "Does this typed value serialize to that JSON?" without building the JSON.
//!
//! The echo checks compare a status as the index holds it (typed) with the status a pass
//! computed (a `serde_json::Value`). Serializing the typed side into a fresh `Value` for every
//! echo (tens of thousands at a cold start) allocates a whole tree only to compare and drop it.
//! [`serializes_to`] instead walks the value through a [`serde::Serializer`] that compares each
//! piece with the matching part of the JSON as it goes, and stops at the first difference.
//!
//! ```text
//! typed.serialize(Compare(&json)) ─► struct/seq/string/number ... compared in place
//!                                 └► anything this module does not model (maps with
//!                                    non-string keys, enum variants with data, bytes, ...)
//!                                    ─► Unsupported ─► serde_json::to_value + == (the old way)
//! ```
//!
//! The answer is always the one `serde_json::to_value(typed) == json` gives: for what it models,
//! it follows `to_value`'s rules (a `None` or unit is `null`, skipped fields are absent, integers
//! compare as JSON integers, floats as JSON floats); for the rest it falls back to it.

use serde::ser::{self, Serialize};
use serde_json::{Map, Value};

/// Whether `typed` serializes to exactly `json` (as `serde_json::to_value(typed) == json`).
pub(crate) fn serializes_to<T: Serialize + ?Sized>(typed: &T, json: &Value) -> bool {
    match typed.serialize(Compare(json)) {
        Ok(()) => true,
        Err(Outcome::Differs) => false,
        Err(Outcome::Unsupported) => serde_json::to_value(typed).is_ok_and(|v| v == *json),
    }
}

/// Why a comparison stopped.
#[derive(Debug)]
enum Outcome {
    /// The typed value does not serialize to the JSON.
    Differs,
    /// A shape this module does not compare in place: the caller serializes instead.
    Unsupported,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Differs => "differs",
            Outcome::Unsupported => "unsupported",
        })
    }
}

impl std::error::Error for Outcome {}

impl ser::Error for Outcome {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        // A type's own serialization error: `to_value` would fail too; let it decide.
        Outcome::Unsupported
    }
}

fn same(equal: bool) -> Result<(), Outcome> {
    if equal { Ok(()) } else { Err(Outcome::Differs) }
}

/// A serializer that compares what it is given with one JSON value.
struct Compare<'a>(&'a Value);

/// Compares the elements of a sequence one by one.
struct Elements<'a> {
    items: &'a [Value],
    next: usize,
}

impl Elements<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Outcome> {
        let item = self.items.get(self.next).ok_or(Outcome::Differs)?;
        self.next += 1;
        value.serialize(Compare(item))
    }

    fn end(self) -> Result<(), Outcome> {
        same(self.next == self.items.len())
    }
}

/// Compares the fields of a struct with the members of an object; every member must be
/// matched by a field (counted, as field names are distinct).
struct Fields<'a> {
    members: &'a Map<String, Value>,
    seen: usize,
}

/// Sequences, tuples and tuple structs all compare element by element.
macro_rules! elements_compound {
    ($($trait:ident: $method:ident;)+) => {$(
        impl ser::$trait for Elements<'_> {
            type Ok = ();
            type Error = Outcome;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Outcome> {
                self.element(value)
            }
            fn end(self) -> Result<(), Outcome> {
                Elements::end(self)
            }
        }
    )+};
}

elements_compound! {
    SerializeSeq: serialize_element;
    SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field;
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Outcome;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Outcome> {
        let member = self.members.get(key).ok_or(Outcome::Differs)?;
        self.seen += 1;
        value.serialize(Compare(member))
    }
    fn end(self) -> Result<(), Outcome> {
        same(self.seen == self.members.len())
    }
}

/// The shapes compared by serializing instead (see [`Outcome::Unsupported`]).
struct Unsupported;

macro_rules! unsupported_compound {
    ($($trait:ident: $($method:ident($($arg:ident: $ty:ty),*)),+;)+) => {$(
        impl ser::$trait for Unsupported {
            type Ok = ();
            type Error = Outcome;
            $(fn $method<T: Serialize + ?Sized>(&mut self, $($arg: $ty,)* _: &T) -> Result<(), Outcome> {
                $(let _ = $arg;)*
                Err(Outcome::Unsupported)
            })+
            fn end(self) -> Result<(), Outcome> {
                Err(Outcome::Unsupported)
            }
        }
    )+};
}

unsupported_compound! {
    SerializeTupleVariant: serialize_field();
    SerializeMap: serialize_key(), serialize_value();
    SerializeStructVariant: serialize_field(key: &'static str);
}

impl<'a> ser::Serializer for Compare<'a> {
    type Ok = ();
    type Error = Outcome;
    type SerializeSeq = Elements<'a>;
    type SerializeTuple = Elements<'a>;
    type SerializeTupleStruct = Elements<'a>;
    type SerializeTupleVariant = Unsupported;
    type SerializeMap = Unsupported;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Unsupported;

    fn serialize_bool(self, v: bool) -> Result<(), Outcome> {
        same(self.0.as_bool() == Some(v))
    }
    fn serialize_i8(self, v: i8) -> Result<(), Outcome> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Outcome> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Outcome> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Outcome> {
        // `to_value` makes a JSON integer; a float of the same value is not equal to it.
        same(
            self.0
                .as_number()
                .is_some_and(|n| !n.is_f64() && n.as_i64() == Some(v)),
        )
    }
    fn serialize_u8(self, v: u8) -> Result<(), Outcome> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Outcome> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Outcome> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Outcome> {
        same(
            self.0
                .as_number()
                .is_some_and(|n| !n.is_f64() && n.as_u64() == Some(v)),
        )
    }
    fn serialize_f32(self, _: f32) -> Result<(), Outcome> {
        // f32 widening and non-finite floats have rules of their own in `to_value`.
        Err(Outcome::Unsupported)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Outcome> {
        if !v.is_finite() {
            return Err(Outcome::Unsupported);
        }
        same(
            self.0
                .as_number()
                .is_some_and(|n| n.is_f64() && n.as_f64() == Some(v)),
        )
    }
    fn serialize_char(self, v: char) -> Result<(), Outcome> {
        let mut buf = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut buf))
    }
    fn serialize_str(self, v: &str) -> Result<(), Outcome> {
        same(self.0.as_str() == Some(v))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Outcome> {
        Err(Outcome::Unsupported)
    }
    fn serialize_none(self) -> Result<(), Outcome> {
        same(self.0.is_null())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Outcome> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Outcome> {
        same(self.0.is_null())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Outcome> {
        same(self.0.is_null())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Outcome> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Outcome> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Outcome> {
        Err(Outcome::Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Elements<'a>, Outcome> {
        match self.0 {
            Value::Array(items) => Ok(Elements { items, next: 0 }),
            _ => Err(Outcome::Differs),
        }
    }
    fn serialize_tuple(self, len: usize) -> Result<Elements<'a>, Outcome> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Elements<'a>, Outcome> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Unsupported, Outcome> {
        Err(Outcome::Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Unsupported, Outcome> {
        Err(Outcome::Unsupported)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a>, Outcome> {
        match self.0 {
            Value::Object(members) => Ok(Fields { members, seen: 0 }),
            _ => Err(Outcome::Differs),
        }
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Unsupported, Outcome> {
        Err(Outcome::Unsupported)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use gateway_api::httproutes::HttpRouteStatus;
    use serde_json::json;

    use super::*;

    fn agrees<T: Serialize>(typed: &T, json: &Value) {
        let expected = serde_json::to_value(typed).unwrap() == *json;
        assert_eq!(serializes_to(typed, json), expected, "{json}");
    }

    /// Every answer is the one serializing and comparing gives, for equal values and for
    /// each kind of difference: a changed leaf, a missing or extra member, a longer or shorter
    /// list, `null` against absent, integers against floats, and shapes it falls back for.
    #[test]
    fn answers_as_serializing_and_comparing_does() {
        let status: HttpRouteStatus = serde_json::from_value(json!({"parents": [
            {"controllerName": "c", "parentRef": {"name": "gw", "port": 80},
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "", "observedGeneration": 3,
                "lastTransitionTime": "2024-01-01T00:00:00Z"}]}]}))
        .unwrap();
        let json = serde_json::to_value(&status).unwrap();
        assert!(serializes_to(&status, &json));
        let variants = |f: &dyn Fn(&mut Value)| {
            let mut v = json.clone();
            f(&mut v);
            v
        };
        let cond = "/parents/0/conditions/0";
        let changed = [
            variants(&|v| v.pointer_mut(cond).unwrap()["reason"] = json!("Other")),
            variants(&|v| v.pointer_mut(cond).unwrap()["observedGeneration"] = json!(3.0)),
            variants(&|v| v.pointer_mut(cond).unwrap()["observedGeneration"] = json!(4)),
            variants(&|v| v.pointer_mut(cond).unwrap()["observedGeneration"] = json!("3")),
            variants(&|v| {
                v.pointer_mut(cond).unwrap()["lastTransitionTime"] = json!("2024-01-01T00:00:01Z")
            }),
            variants(&|v| v.pointer_mut(cond).unwrap()["extra"] = json!(null)),
            variants(&|v| {
                v.pointer_mut(cond)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove("message");
            }),
            variants(&|v| v.pointer_mut("/parents/0/parentRef").unwrap()["port"] = json!(null)),
            variants(&|v| {
                v.pointer_mut("/parents/0/parentRef").unwrap()["namespace"] = json!(null)
            }),
            variants(&|v| {
                let c = v.pointer(cond).unwrap().clone();
                v.pointer_mut("/parents/0/conditions")
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(c);
            }),
            variants(&|v| v["parents"] = json!([])),
            variants(&|v| v["parents"] = json!({})),
            json!(null),
        ];
        for v in &changed {
            assert!(!serializes_to(&status, v), "{v}");
            agrees(&status, v);
        }
        // The empty status: an empty parent list.
        agrees(&HttpRouteStatus::default(), &json!({"parents": []}));
        agrees(&HttpRouteStatus::default(), &json!({}));
        // Shapes compared by serializing (maps), and floats.
        let map: BTreeMap<String, i64> = [("a".to_string(), 1)].into();
        agrees(&map, &json!({"a": 1}));
        agrees(&map, &json!({"a": 2}));
        agrees(&Some(1.5f64), &json!(1.5));
        agrees(&Some(1.5f64), &json!(2.5));
        agrees(&(1u8, "x"), &json!([1, "x"]));
        agrees(&-3i32, &json!(-3));
        agrees(&u64::MAX, &json!(u64::MAX));
        agrees(&u64::MAX, &json!(-1));
    }

    /// Measurement, not a check (`--ignored --nocapture`): N echo comparisons of a route
    /// status (two parents, two conditions each) by serializing and by comparing in place.
    #[test]
    #[ignore = "measurement"]
    fn measure_echo_comparison() {
        use std::time::Instant;
        let n = 100_000;
        let parent = |gw: &str| {
            json!({"controllerName": "meridian.dev/gateway-controller",
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                    "name": gw, "namespace": "default"},
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                     "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                     "message": "", "observedGeneration": 1,
                     "lastTransitionTime": "2024-01-01T00:00:00Z"}]})
        };
        let json = json!({"parents": [parent("a"), parent("b")]});
        let status: HttpRouteStatus = serde_json::from_value(json.clone()).unwrap();
        for round in 0..2 {
            let t = Instant::now();
            let equal = (0..n)
                .filter(|_| serde_json::to_value(&status).is_ok_and(|v| v == json))
                .count();
            let serializing = t.elapsed();
            let t = Instant::now();
            let in_place = (0..n).filter(|_| serializes_to(&status, &json)).count();
            let comparing = t.elapsed();
            assert_eq!(equal, in_place);
            println!(
                "round {round}: {n} echo comparisons: to_value + == {serializing:?} ({:.2} us each), in place {comparing:?} ({:.2} us each)",
                serializing.as_secs_f64() * 1e6 / n as f64,
                comparing.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
