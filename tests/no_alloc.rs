//! The routing decision allocates nothing: virtual host selection, route matching (path, header,
//! query, regex rules) and the weighted pick run against a compiled table with zero heap
//! allocations, checked with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::HeaderMap;
use serde_json::json;
use sluice_proxy::compile::{route_table, ClusterResolver};
use sluice_proxy::matcher::RequestView;
use sluice_proxy::route_table::{RouteAction, Target};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the thread that routes: only its allocations count. Other threads of the test
    /// process (the test harness's main thread allocates when it parks on its channel, which
    /// happens under CPU contention) are not the routing path. Const-initialized, without a
    /// destructor, so reading it never allocates.
    static ROUTING_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counts() -> bool {
    COUNTING.load(Ordering::Relaxed) && ROUTING_THREAD.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no effect on
// the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counts() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counts() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn routing_a_request_does_not_allocate() {
    let rc = json!({"virtual_hosts": [
        {"name": "exact", "domains": ["shop.example.com"], "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "lane", "string_match": {"exact": "canary"}}]}, "route": {"cluster": "canary"}},
            {"match": {"prefix": "/", "headers": [{"name": "cookie", "string_match": {"safe_regex": {"regex": ".*user=jason.*"}}}]}, "route": {"cluster": "canary"}},
            {"match": {"prefix": "/", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}, "route": {"cluster": "canary"}},
            {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "stable"}},
            {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "stable", "weight": 80}, {"name": "canary", "weight": 20}]}}}
        ]},
        {"name": "wild", "domains": ["*.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "stable"}}]}
    ]});
    let clusters = HashMap::new();
    let table = route_table(
        &rc,
        "",
        &ClusterResolver {
            clusters: &clusters,
            validate: false,
        },
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("cookie", "a=1; user=bob".parse().unwrap());
    headers.append("lane", "stable".parse().unwrap());
    headers.append("lane", "blue".parse().unwrap());
    let requests = [
        ("shop.example.com", "/items/42", ""),
        ("shop.example.com", "/cart", "v=1&x=2"),
        ("shop.example.com", "/", ""),
        ("api.example.com", "/x", ""),
    ];
    let mut weighted = [0usize; 2];
    // Warm-up: the regex engine creates its match cache on first use in a thread, once.
    for (host, path, query) in requests {
        let view = RequestView {
            method: "GET",
            scheme: "http",
            authority: host,
            path,
            query,
            path_and_query: path,
            headers: &headers,
        };
        let _ = table.route(&view, 0);
    }
    ROUTING_THREAD.with(|t| t.set(true));
    COUNTING.store(true, Ordering::SeqCst);
    for i in 0..10_000u64 {
        let (host, path, query) = requests[(i % 4) as usize];
        let view = RequestView {
            method: "GET",
            scheme: "http",
            authority: host,
            path,
            query,
            path_and_query: path,
            headers: &headers,
        };
        let hit = table
            .route(&view, i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .expect("every request routes");
        if let RouteAction::Forward(f) = &hit.route.action {
            if let Target::Weighted(w) = &f.target {
                weighted[w.pick.pick_random(i)] += 1;
            }
        }
    }
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCATIONS.load(Ordering::SeqCst);
    assert!(
        weighted[0] > 0 && weighted[1] > 0,
        "the weighted route was exercised: {weighted:?}"
    );
    assert_eq!(n, 0, "{n} heap allocations while routing 10,000 requests");
}
