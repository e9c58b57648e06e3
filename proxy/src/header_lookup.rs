//! Looking a name up in a message's header map. `HeaderMap::get` hashes the name (byte by byte
//! for names outside the standard set) and then probes; most messages carry a handful of
//! headers, and comparing the name against each of those costs less than hashing it once. The
//! questions asked of every request (gRPC? an upgrade? a request id?) are nearly always answered
//! "absent", which a scan of a small map settles without hashing at all.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many values, a map is scanned rather than hashed into.
const SCAN_UP_TO: usize = 8;

/// The first value of `name`, as `HeaderMap::get` gives it.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() <= SCAN_UP_TO {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// The first value of `name`, and whether it is its only one.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<(&'a HeaderValue, bool)> {
    if headers.len() <= SCAN_UP_TO {
        let mut values = headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v);
        values.next().map(|v| (v, values.next().is_none()))
    } else {
        let mut values = headers.get_all(name).iter();
        values.next().map(|v| (v, values.next().is_none()))
    }
}

/// Whether `name` is present, as `HeaderMap::contains_key` says.
pub fn contains(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.len() <= SCAN_UP_TO {
        headers.keys().any(|n| n == name)
    } else {
        headers.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn answers_as_the_map_itself_whatever_its_size() {
        let probes = [
            header::HOST,
            header::CONTENT_TYPE,
            header::UPGRADE,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-other"),
        ];
        for size in [0, 1, 3, SCAN_UP_TO, SCAN_UP_TO + 1, 20] {
            let mut map = HeaderMap::new();
            for i in 0..size {
                let name = match i % 5 {
                    0 => header::HOST,
                    1 => HeaderName::from_static("x-request-id"),
                    2 => header::ACCEPT,
                    3 if i > 3 => header::HOST,
                    _ => HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                };
                map.append(name, HeaderValue::from_str(&i.to_string()).unwrap());
            }
            for name in &probes {
                assert_eq!(get(&map, name), map.get(name), "{name} in {size}");
                let all: Vec<_> = map.get_all(name).iter().collect();
                assert_eq!(
                    first(&map, name),
                    all.first().map(|v| (*v, all.len() == 1)),
                    "{name} in {size}"
                );
                assert_eq!(
                    contains(&map, name),
                    map.contains_key(name),
                    "{name} in {size}"
                );
            }
        }
    }
}
