//! An order's dependency graph as server-rendered SVG (no script): layered left to right by
//! longest path from the order's first steps, each node coloured by its item's state and
//! linked to the item's page. Larger orders are summarised by step (item type) and state.

use super::*;
use crate::db::dependencies::{Graph, Node};
use std::collections::{BTreeMap, HashMap};

/// Orders with more items than this are drawn by step, not item by item.
pub(super) const MAX_NODES: usize = 300;

const NODE_W: i64 = 150;
const NODE_H: i64 = 32;
const GAP_X: i64 = 60;
const GAP_Y: i64 = 14;
const PAD: i64 = 10;

/// Fill and text colour of a state (presentation attributes: the page's CSP allows no
/// inline style).
fn colours(status: ItemStatus, waiting: bool) -> (&'static str, &'static str) {
    match status {
        ItemStatus::Completed => ("#e7f5ec", "#1e7a3e"),
        ItemStatus::Failed => ("#fdecea", "#b3261e"),
        ItemStatus::Cancelled => ("#eceff3", "#5f6b7a"),
        ItemStatus::AwaitingApproval => ("#fff8e6", "#8a5a00"),
        ItemStatus::Processing => ("#e8f0fe", "#1a56b0"),
        ItemStatus::Queued if waiting => ("#ffffff", "#5f6b7a"),
        ItemStatus::Queued => ("#f4f6f8", "#1f2933"),
    }
}

/// Longest-path layer of each node: 0 for nodes with no dependency inside the graph.
/// Edges are (dependent, dependency); the graph has no cycle (refused at INSERT).
fn layers<K: Copy + Eq + std::hash::Hash + Ord>(nodes: &[K], edges: &[(K, K)]) -> HashMap<K, usize> {
    let mut needs: HashMap<K, Vec<K>> = HashMap::new();
    for (dependent, dependency) in edges {
        needs.entry(*dependent).or_default().push(*dependency);
    }
    let mut layer: HashMap<K, usize> = HashMap::new();
    // Iterative depth-first evaluation (an order may hold a long chain).
    for start in nodes {
        let mut stack = vec![(*start, false)];
        while let Some((node, expanded)) = stack.pop() {
            if layer.contains_key(&node) {
                continue;
            }
            let deps = needs.get(&node).map(Vec::as_slice).unwrap_or(&[]);
            if expanded {
                let l = deps.iter().filter_map(|d| layer.get(d)).map(|l| l + 1).max().unwrap_or(0);
                layer.insert(node, l);
            } else {
                stack.push((node, true));
                stack.extend(deps.iter().filter(|d| !layer.contains_key(d)).map(|d| (*d, false)));
            }
        }
    }
    layer
}

struct Placed {
    x: i64,
    y: i64,
}

fn place<K: Copy + Eq + std::hash::Hash + Ord>(
    order: &[K],
    layer: &HashMap<K, usize>,
) -> (HashMap<K, Placed>, i64, i64) {
    let mut rows: BTreeMap<usize, i64> = BTreeMap::new();
    let mut at = HashMap::new();
    for key in order {
        let l = layer.get(key).copied().unwrap_or(0);
        let row = rows.entry(l).or_insert(0);
        at.insert(*key, Placed { x: PAD + l as i64 * (NODE_W + GAP_X), y: PAD + *row * (NODE_H + GAP_Y) });
        *row += 1;
    }
    let columns = rows.len().max(1) as i64;
    let height = rows.values().copied().max().unwrap_or(1);
    (at, PAD * 2 + columns * NODE_W + (columns - 1) * GAP_X, PAD * 2 + height * NODE_H + (height - 1).max(0) * GAP_Y)
}

fn edge_path(from: &Placed, to: &Placed) -> String {
    // From the dependency's right edge to the dependent's left edge.
    let (x1, y1) = (from.x + NODE_W, from.y + NODE_H / 2);
    let (x2, y2) = (to.x, to.y + NODE_H / 2);
    let mid = (x1 + x2) / 2;
    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
}

fn dash(kind: &str) -> &'static str {
    match kind {
        "SOFT" => "6 4",
        "RELATED" => "2 4",
        _ => "none",
    }
}

/// The order's graph, item by item (up to [`MAX_NODES`]) or by step.
pub(super) fn svg(order: Uuid, graph: &Graph) -> Markup {
    if graph.truncated || graph.nodes.len() > MAX_NODES {
        return by_step(order, graph);
    }
    let ids: Vec<Uuid> = graph.nodes.iter().map(|n| n.id).collect();
    let pairs: Vec<(Uuid, Uuid)> =
        graph.edges.iter().filter(|(_, _, kind)| kind != "RELATED").map(|(a, b, _)| (*a, *b)).collect();
    let layer = layers(&ids, &pairs);
    let (at, width, height) = place(&ids, &layer);
    let label = |n: &Node| format!("{} {}", n.item_type, short(n.id));
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label=(format!("dependency graph of order {order}: {} items, {} edges", graph.nodes.len(), graph.edges.len())) {
            @for (dependent, dependency, kind) in &graph.edges {
                @if let (Some(from), Some(to)) = (at.get(dependency), at.get(dependent)) {
                    path d=(edge_path(from, to)) fill="none" stroke="#8795a1" stroke-width="1.5" stroke-dasharray=(dash(kind)) {}
                }
            }
            @for n in &graph.nodes {
                @let p = &at[&n.id];
                @let (fill, ink) = colours(n.status, n.waiting);
                a href=(format!("/items/{}", n.id)) {
                    title { (format!("{} {} {}{}", n.item_type, n.id, n.status, if n.waiting { " (waiting for dependencies)" } else { "" })) }
                    rect x=(p.x) y=(p.y) width=(NODE_W) height=(NODE_H) rx="5" fill=(fill) stroke=(ink)
                        stroke-dasharray=(if n.waiting { "4 3" } else { "none" }) {}
                    text x=(p.x + 8) y=(p.y + 14) font-size="11" fill=(ink) { (label(n)) }
                    text x=(p.x + 8) y=(p.y + 27) font-size="10" fill=(ink) { (n.status.as_str()) @if n.waiting { " · waiting" } }
                }
            }
        }
    }
}

/// A large order by step: one node per item type with its counts by state, the edges
/// between types.
fn by_step(order: Uuid, graph: &Graph) -> Markup {
    let mut counts: BTreeMap<&str, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let type_of: HashMap<Uuid, &str> = graph.nodes.iter().map(|n| (n.id, n.item_type.as_str())).collect();
    for n in &graph.nodes {
        let state = if n.waiting { "WAITING" } else { n.status.as_str() };
        *counts.entry(n.item_type.as_str()).or_default().entry(state).or_default() += 1;
    }
    let mut type_edges: Vec<(&str, &str)> = graph
        .edges
        .iter()
        .filter(|(_, _, kind)| kind != "RELATED")
        .filter_map(|(a, b, _)| Some((*type_of.get(a)?, *type_of.get(b)?)))
        .filter(|(a, b)| a != b)
        .collect();
    type_edges.sort_unstable();
    type_edges.dedup();
    let types: Vec<&str> = counts.keys().copied().collect();
    // Types can depend on each other both ways (items, not steps, are acyclic): a layer
    // is then taken from the first way seen.
    let acyclic: Vec<(&str, &str)> =
        type_edges.iter().copied().filter(|(a, b)| a < b || !type_edges.contains(&(*b, *a))).collect();
    let layer = layers(&types, &acyclic);
    let (at, width, height) = place(&types, &layer);
    html! {
        p { "Drawn by step: the order has " (graph.nodes.len()) @if graph.truncated { "+" } " items." }
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label=(format!("dependency graph of order {order} by step")) {
            @for (dependent, dependency) in &type_edges {
                @if let (Some(from), Some(to)) = (at.get(dependency), at.get(dependent)) {
                    path d=(edge_path(from, to)) fill="none" stroke="#8795a1" stroke-width="1.5" {}
                }
            }
            @for t in &types {
                @let p = &at[t];
                @let summary = counts[t].iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
                a href=(format!("/items?order={order}&type={}", q(t))) {
                    title { (format!("{t}: {summary}")) }
                    rect x=(p.x) y=(p.y) width=(NODE_W) height=(NODE_H) rx="5" fill="#f4f6f8" stroke="#1f2933" {}
                    text x=(p.x + 8) y=(p.y + 14) font-size="11" fill="#1f2933" { (t) }
                    text x=(p.x + 8) y=(p.y + 27) font-size="10" fill="#1f2933" { (cut_to(&summary, 28)) }
                }
            }
        }
    }
}

fn cut_to(text: &str, chars: usize) -> String {
    crate::model::printable(text, chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_follow_the_longest_path() {
        // d needs b and c; c needs b; b needs a: a=0, b=1, c=2, d=3.
        let nodes = ["a", "b", "c", "d"];
        let edges = [("b", "a"), ("c", "b"), ("d", "b"), ("d", "c")];
        let l = layers(&nodes, &edges);
        assert_eq!([l["a"], l["b"], l["c"], l["d"]], [0, 1, 2, 3]);
    }

    fn node(n: usize, item_type: &str, status: ItemStatus, waiting: bool) -> Node {
        Node {
            id: Uuid::from_u128(n as u128 + 1),
            item_type: item_type.to_owned(),
            status,
            created_at: chrono::Utc::now(),
            waiting,
        }
    }

    #[test]
    fn a_small_order_is_drawn_item_by_item() {
        let nodes =
            vec![node(0, "EXTRACT", ItemStatus::Completed, false), node(1, "SUMMARISE", ItemStatus::Queued, true)];
        let graph = Graph { edges: vec![(nodes[1].id, nodes[0].id, "SOFT".into())], nodes, truncated: false };
        let svg = svg(Uuid::nil(), &graph).into_string();
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(&format!("href=\"/items/{}\"", Uuid::from_u128(2))));
        assert!(svg.contains("stroke-dasharray=\"6 4\""), "SOFT is dashed: {svg}");
        assert!(svg.contains("#e7f5ec"), "COMPLETED is green");
    }

    #[test]
    fn a_large_order_is_drawn_by_step_with_counts() {
        // 400 items: 1 root, 398 in the middle (half done), 1 sink.
        let mut nodes = vec![node(0, "EXTRACT", ItemStatus::Completed, false)];
        nodes.extend((1..399).map(|n| {
            node(n, "CLASSIFY", if n % 2 == 0 { ItemStatus::Completed } else { ItemStatus::Processing }, false)
        }));
        nodes.push(node(399, "SUMMARISE", ItemStatus::Queued, true));
        let mut edges: Vec<(Uuid, Uuid, String)> =
            (1..399).map(|n| (nodes[n].id, nodes[0].id, "BLOCKS".into())).collect();
        edges.extend((1..399).map(|n| (nodes[399].id, nodes[n].id, "BLOCKS".into())));
        let svg = svg(Uuid::nil(), &Graph { nodes, edges, truncated: false }).into_string();
        assert!(svg.contains("Drawn by step: the order has 400 items."), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3, "one box per step");
        assert_eq!(svg.matches("<path").count(), 2, "one line per pair of steps");
        assert!(svg.contains("199 COMPLETED, 199 PROCESSING"), "{svg}");
        assert!(svg.contains("1 WAITING"));
        assert!(svg.contains("type=SUMMARISE"), "each step links to its items");
    }

    #[test]
    fn a_long_chain_is_layered_without_recursion() {
        let nodes: Vec<u32> = (0..100_000).collect();
        let edges: Vec<(u32, u32)> = (1..100_000).map(|i| (i, i - 1)).collect();
        let l = layers(&nodes, &edges);
        assert_eq!(l[&99_999], 99_999);
    }
}
