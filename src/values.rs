//! What a value from an operator's file may be: the predicates config and inventory share.
//!
//! Values reach shell scripts and kernel command lines, so the allowed characters are a
//! short list rather than an escaping scheme; names and paths are checked the same way
//! wherever they are read.

/// Characters allowed in variable values: nothing a shell or a kernel command line treats
/// specially apart from the space (templates that put values into a command line keep them
/// one word by choosing values without spaces).
pub(crate) fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ._-:/@+=,%~^*#[]()!".contains(c)
}

/// Characters allowed on a kernel command line we build.
pub(crate) fn cmdline_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ._-:/=,+@%?".contains(c)
}

pub(crate) fn valid_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// RFC 1123 host name (one or more labels).
pub(crate) fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A relative path that stays inside its folder.
pub(crate) fn safe_relative(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}
