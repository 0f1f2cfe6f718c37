//! Short texts for messages: user input echoed back is cut to a short prefix, so a 100 KB
//! `session_id` never becomes a 100 KB error.

use std::borrow::Cow;

/// How much of a user-supplied value a message repeats.
pub const ECHO_LIMIT: usize = 80;

/// `s` cut to [`ECHO_LIMIT`] characters, with a note saying how much was left out.
pub fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(ECHO_LIMIT) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}... ({} bytes in all)", &s[..cut], s.len())),
    }
}

/// A size for people: `3.0 MiB`, `512.0 KiB`, `10 bytes`.
pub fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_kept_and_long_input_is_cut_on_a_char_boundary() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(100_000);
        let c = clip(&long);
        assert!(c.len() < 250, "{c}");
        assert!(c.starts_with(&"é".repeat(ECHO_LIMIT)));
        assert!(c.ends_with("(200000 bytes in all)"), "{c}");
    }
}
