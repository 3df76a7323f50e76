//! Every item `#[record]` supports.
use streams_core::prelude::*;

#[record]
#[serde(rename_all = "camelCase")]
pub struct Named {
    pub user_id: String,
    pub page_views: u32,
}

#[record]
pub struct Tuple(pub String, pub i64);

#[record]
pub struct Unit;

#[record]
#[serde(tag = "type")]
pub enum Event {
    Click { x: i32, y: i32 },
    Scroll { delta: f64 },
}

fn main() {
    let named = Named::decode(br#"{"userId": "u1", "pageViews": 3}"#).expect("decodes");
    assert_eq!(named.page_views, 3);
    assert_eq!(Tuple::decode(br#"["a", 1]"#).expect("decodes").1, 1);
    assert!(Unit::decode(b"null").is_ok());
    let event = Event::decode(br#"{"type": "Scroll", "delta": 1.5}"#).expect("decodes");
    assert!(matches!(event, Event::Scroll { .. }));
    assert!(Named::decode(br#"{"userId": 1}"#).is_err());
    assert_eq!(String::from_utf8(Tuple("b".into(), 2).encode().expect("encodes")).expect("utf8"), r#"["b",2]"#);
}
