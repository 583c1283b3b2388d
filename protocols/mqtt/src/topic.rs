//! Topic name and topic filter syntax (spec 4.7, 4.8.2). Public so the session can check
//! names that arrive from elsewhere (another protocol, a will, a response topic).

use crate::error::DecodeError;

const SHARE_PREFIX: &str = "$share/";

/// A topic name (what PUBLISH carries): at least one character, no `+` or `#`.
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid);
    }
    Ok(())
}

/// A topic filter (what SUBSCRIBE and UNSUBSCRIBE carry): at least one character, `+`
/// and `#` only as whole levels, `#` only last; a `$share/<group>/<filter>` needs a
/// non-empty group without wildcards and a valid filter after it.
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(DecodeError::TopicFilterInvalid("shared subscription without a filter"));
        };
        if group.is_empty() {
            return Err(DecodeError::TopicFilterInvalid("empty share name"));
        }
        if group.contains(['+', '#']) {
            return Err(DecodeError::TopicFilterInvalid("wildcard in share name"));
        }
        return validate_plain_filter(inner);
    }
    validate_plain_filter(filter)
}

fn validate_plain_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::TopicFilterInvalid("empty filter"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(DecodeError::TopicFilterInvalid("'#' must be a whole last level"));
        }
        if level.contains('+') && level != "+" {
            return Err(DecodeError::TopicFilterInvalid("'+' must be a whole level"));
        }
    }
    Ok(())
}

/// Splits a shared subscription `$share/<group>/<filter>` into group and filter; `None`
/// for an ordinary filter. Assumes the filter was validated.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARE_PREFIX)?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a", "/", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/#", "$SYS/#", "$share/g/a/#", "$share/g/#", "$share"] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/b+/c", "$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/", "$share/#/a"]
        {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a/#").is_err());
    }

    #[test]
    fn shared() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("a/b"), None);
    }
}
