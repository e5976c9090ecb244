//! Topic names and filters: validation and matching, as MQTT 3.1.1 §4.7 and MQTT 5 §4.7 say.
//!
//! Written here rather than taken from the codec crate because the edge needs the rules the
//! codec's helpers skip: NUL is forbidden, `$` topics are never matched by a leading wildcard,
//! and `$share/{group}/{filter}` is split into its group and inner filter.

/// Longest topic or filter accepted, in bytes (the MQTT string limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    Nul,
    Wildcard,
    BadWildcard,
    BadShare,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 65535 bytes",
            TopicError::Nul => "topic contains U+0000",
            TopicError::Wildcard => "a topic name may not contain + or #",
            TopicError::BadWildcard => "+ and # must fill a whole level, and # must be last",
            TopicError::BadShare => "a shared subscription is $share/{group}/{filter}",
        })
    }
}

impl std::error::Error for TopicError {}

/// Checks a topic name used in PUBLISH (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter used in SUBSCRIBE/UNSUBSCRIBE (shared subscriptions included).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    match split_shared(filter) {
        Some(Ok((_, inner))) => validate_plain_filter(inner),
        Some(Err(e)) => Err(e),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// `$share/group/filter` → `Some(Ok((group, filter)))`; other filters → `None`.
pub fn split_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            Ok((group, inner))
        }
        _ => Err(TopicError::BadShare),
    })
}

/// The filter that messages are matched against: the inner filter of a shared subscription.
pub fn match_filter(filter: &str) -> &str {
    match split_shared(filter) {
        Some(Ok((_, inner))) => inner,
        _ => filter,
    }
}

/// Does `filter` (already valid, not shared) match topic name `topic`?
///
/// A filter starting with a wildcard never matches a topic starting with `$` (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// The literal part of a filter before its first wildcard level (used for prefix scans).
pub fn literal_prefix(filter: &str) -> &str {
    match filter.find(['+', '#']) {
        Some(i) => &filter[..i],
        None => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("+", ""));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a", "a/b"));
    }

    #[test]
    fn validation() {
        assert!(validate_topic("a/b").is_ok());
        assert_eq!(validate_topic("a/+"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic("a\0"), Err(TopicError::Nul));
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(validate_filter("a/+/#").is_ok());
        assert_eq!(validate_filter("a/b#"), Err(TopicError::BadWildcard));
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadWildcard));
        assert!(validate_filter("$share/g/a/#").is_ok());
        assert_eq!(validate_filter("$share/g"), Err(TopicError::BadShare));
        assert_eq!(validate_filter("$share//a"), Err(TopicError::BadShare));
        assert_eq!(match_filter("$share/g/a/#"), "a/#");
        assert_eq!(literal_prefix("a/b/+/c"), "a/b/");
    }
}
