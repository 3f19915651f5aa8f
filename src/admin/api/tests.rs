//! Unit tests of the parent module.

use super::*;

#[test]
fn cursors_round_trip_and_refuse_garbage() {
    let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    let id = Uuid::new_v4();
    assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
    for bad in ["", "x", "MTIz", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12:nope")] {
        assert_eq!(decode_cursor(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[test]
fn filters_are_parsed_strictly() {
    let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let f = item_filter(&q(&[("state", "queued"), ("type", "TICKET")])).unwrap();
    assert_eq!((f.status, f.item_type.as_deref()), (Some(ItemStatus::Queued), Some("TICKET")));
    assert!(item_filter(&q(&[("state", "sleeping")])).unwrap_err().message.contains("QUEUED"));
    assert!(item_filter(&q(&[("order", "12")])).is_err());
    assert!(item_filter(&q(&[("created_since", "yesterday")])).is_err());
    assert!(params(q(&[("stat", "QUEUED")]), &["state"]).unwrap_err().message.contains("`stat`"));
    assert_eq!(page_limit(&q(&[("limit", "100000")])).unwrap(), MAX_PAGE);
    assert!(page_limit(&q(&[("limit", "0")])).is_err());
    let f = letter_filter(None, Some("NO_ROUTE"), None, Some("1h"), None).unwrap();
    assert_eq!((f.open, f.older_than_secs), (Some(true), Some(3600.0)));
    assert!(letter_filter(Some("maybe"), None, None, None, None).is_err());
    assert!(letter_filter(None, None, None, Some("soon"), None).is_err());
}
