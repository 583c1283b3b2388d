//! Headers exchanges: a binding's arguments (`x-match` all/any) matched
//! against a message's `headers` table.
//!
//! A binding is a core binding in the exchange's space with the pattern
//! `[routing-key, arguments-hex]`, so it is durable exactly when the queue
//! is and goes with it; nothing routes through the core trie there. The core
//! cannot list a space's bindings cheaply, so matching runs over an
//! in-memory copy per exchange, loaded from the core the first time the
//! exchange routes and kept up to date by bind/unbind/delete.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use polymq::queue::QueueId;
use polymq::route::{Level, Pattern};
use polymq::Store;

use crate::codec::{self, AMQPValue, FieldTable};
use crate::exchange::bindings_in;

/// One headers binding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadersBinding {
    pub queue: QueueId,
    pub arguments: FieldTable,
}

/// The core pattern of a headers binding.
pub(crate) fn binding_pattern(routing_key: &str, arguments: &FieldTable) -> Pattern {
    let hex: String = codec::table_to_bytes(arguments).iter().map(|b| format!("{b:02x}")).collect();
    Pattern(vec![Level::Word(routing_key.into()), Level::Word(hex.into())])
}

fn arguments_of(p: &Pattern) -> Option<FieldTable> {
    let [Level::Word(_), Level::Word(hex)] = &p.0[..] else { return None };
    let bytes: Option<Vec<u8>> =
        (0..hex.len() / 2).map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    codec::table_from_bytes(&bytes?)
}

/// Whether a binding's arguments match a message's headers (RabbitMQ's
/// rules: `x-match` `all` (default) / `any`, and `all-with-x` / `any-with-x`
/// to compare `x-` arguments too; a void argument matches on presence).
pub(crate) fn matches(arguments: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match arguments.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut tests = arguments.inner().iter().filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let one = |(k, want): (&codec::ShortString, &AMQPValue)| match headers.get(k) {
        None => false,
        Some(_) if matches!(want, AMQPValue::Void) => true,
        Some(have) => same_value(want, have),
    };
    if any {
        tests.any(one)
    } else {
        tests.all(one)
    }
}

/// Equal values, with strings compared by bytes and integers by value
/// whatever width a client encoded them in.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    fn text(v: &AMQPValue) -> Option<Vec<u8>> {
        match v {
            AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
            AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
            _ => None,
        }
    }
    fn int(v: &AMQPValue) -> Option<i128> {
        Some(match v {
            AMQPValue::ShortShortInt(n) => i128::from(*n),
            AMQPValue::ShortShortUInt(n) => i128::from(*n),
            AMQPValue::ShortInt(n) => i128::from(*n),
            AMQPValue::ShortUInt(n) => i128::from(*n),
            AMQPValue::LongInt(n) => i128::from(*n),
            AMQPValue::LongUInt(n) => i128::from(*n),
            AMQPValue::LongLongInt(n) => i128::from(*n),
            _ => return None,
        })
    }
    if let (Some(x), Some(y)) = (text(a), text(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x == y;
    }
    a == b
}

/// The headers bindings of every headers exchange that has routed so far.
#[derive(Default)]
pub(crate) struct HeadersIndex {
    by_space: Mutex<HashMap<String, Vec<HeadersBinding>>>,
}

impl HeadersIndex {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<HeadersBinding>>> {
        self.by_space.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queues a message with `headers` goes to through the headers
    /// exchange of `space`.
    pub fn route(&self, store: &Store, space: &str, headers: Option<&FieldTable>) -> Vec<QueueId> {
        let loaded = self.map().contains_key(space);
        if !loaded {
            // Outside the lock: this walks every queue's bindings, once per exchange.
            let found: Vec<HeadersBinding> = bindings_in(store, space)
                .into_iter()
                .filter_map(|(queue, p)| Some(HeadersBinding { queue, arguments: arguments_of(&p)? }))
                .collect();
            self.map().entry(space.to_owned()).or_insert(found);
        }
        let map = self.map();
        let mut out: Vec<QueueId> = map
            .get(space)
            .into_iter()
            .flatten()
            .filter(|b| matches(&b.arguments, headers))
            .map(|b| b.queue)
            .filter(|q| store.queue_info(*q).is_some())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Records a bind or unbind (the core binding is already done). An
    /// exchange not loaded yet is left alone: it loads from the core.
    pub fn update(&self, space: &str, queue: QueueId, arguments: &FieldTable, add: bool) {
        let mut map = self.map();
        let Some(list) = map.get_mut(space) else { return };
        list.retain(|b| !(b.queue == queue && &b.arguments == arguments));
        if add {
            list.push(HeadersBinding { queue, arguments: arguments.clone() });
        }
    }

    pub fn forget(&self, space: &str) {
        self.map().remove(space);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::LongString;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn all_and_any_match_like_rabbitmq() {
        let all = table(&[("format", s("pdf")), ("type", s("report"))]);
        let any = table(&[("x-match", s("any")), ("format", s("pdf")), ("type", s("report"))]);
        let pdf = table(&[("format", s("pdf"))]);
        let both = table(&[("format", s("pdf")), ("type", s("report")), ("extra", AMQPValue::Boolean(true))]);
        assert!(!matches(&all, Some(&pdf)));
        assert!(matches(&all, Some(&both)));
        assert!(matches(&any, Some(&pdf)));
        assert!(!matches(&any, None));
        // x- arguments are not compared unless asked; ints match across widths.
        let n = table(&[("n", AMQPValue::LongInt(7)), ("x-other", s("ignored"))]);
        assert!(matches(&n, Some(&table(&[("n", AMQPValue::LongLongInt(7))]))));
        assert!(matches(&table(&[("k", AMQPValue::Void)]), Some(&table(&[("k", s("anything"))]))));
    }

    #[test]
    fn binding_patterns_keep_their_arguments() {
        let args = table(&[("x-match", s("any")), ("a", AMQPValue::LongInt(1))]);
        let p = Pattern::from_canonical(&binding_pattern("rk", &args).to_canonical());
        assert_eq!(arguments_of(&p), Some(args));
    }
}
