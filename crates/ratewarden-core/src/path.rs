//! One canonical form of a request path, so that no spelling of a path slips past the
//! rule written for it.
//!
//! `/API//v1/%61uth/./login/`, `/api/v1/x/../auth/login`, `/api/v1/auth/login;jsessionid=1`,
//! `/api/v1/auth/login.` and `/ａｐｉ/v1/auth/login` (fullwidth) all become
//! `/api/v1/auth/login`. The canonical form is for matching rules; it is deliberately
//! broader than any one upstream's view (case-folded, Unicode NFKC), so a rule matches
//! every spelling some upstream might treat as the same path.
//!
//! What cannot be read unambiguously is refused, to be answered with 400: malformed or
//! double percent-encoding (`%252F`), bytes that are not UTF-8 once decoded, control
//! characters, `..` above the root, dot segments other servers may read differently
//! (`‥`, `...`, `.. `), and paths longer than [`MAX_PATH_BYTES`].

use std::borrow::Cow;
use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// Longest raw path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// An escape that decodes to another escape (`%252F`): one layer would be read by us
    /// and another by the upstream.
    #[error("double percent-encoding")]
    DoubleEncoded,
    /// The decoded bytes are not UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// A control character (NUL, CR, LF, ...).
    #[error("control character in path")]
    ControlCharacter,
    /// `..` climbing above `/`.
    #[error("path climbs above the root")]
    AboveRoot,
    /// Dot segments next to separators that are not a plain `/` (`%2F`, `%5C`, `\`,
    /// fullwidth `／`): servers disagree on whether `..` removal comes before or after
    /// decoding, so the path names no one resource.
    #[error("dot segments combined with encoded or non-standard separators")]
    AmbiguousSeparators,
    /// A segment that is a dot segment to some servers and a name to others: spelled
    /// with compatibility characters (`‥`, `．．`), which NFKC turns into `..`, or made
    /// of dots and spaces only (`...`, `.. `), which servers that drop trailing dots and
    /// spaces read as `.` or `..`.
    #[error("dot segment spelled in a way servers read differently")]
    AmbiguousDots,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

/// A path in canonical form: starts with `/`, no empty, `.` or `..` segments, no
/// trailing `/`, lower case, NFKC. Borrowed from the request when it was written that
/// way already (most are: no copy then), owned when canonicalising changed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CanonicalPath<'a>(Cow<'a, str>);

impl<'a> CanonicalPath<'a> {
    /// Canonicalises the path part of a request target (anything from `?` or `#` on is
    /// ignored).
    pub fn parse(raw: &'a str) -> Result<CanonicalPath<'a>, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        match already_canonical(raw) {
            Some(simple) => Ok(CanonicalPath(Cow::Borrowed(simple))),
            None => canonicalize_fully(without_query(raw.as_bytes())),
        }
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This path, owning its text.
    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath(Cow::Owned(self.0.into_owned()))
    }

    /// Whether this path is `prefix` or lies under it, segment-wise: `/api/v1` is under
    /// `/api`, `/apix` is not.
    pub fn starts_with(&self, prefix: &CanonicalPath<'_>) -> bool {
        let (p, me) = (prefix.as_str(), self.as_str());
        p == "/" || me == p || (me.starts_with(p) && me.as_bytes().get(p.len()) == Some(&b'/'))
    }
}

impl CanonicalPath<'static> {
    /// Canonicalises raw bytes of a request target.
    pub fn from_bytes(raw: &[u8]) -> Result<CanonicalPath<'static>, PathError> {
        match std::str::from_utf8(raw) {
            Ok(text) => CanonicalPath::parse(text).map(CanonicalPath::into_owned),
            Err(_) if raw.len() > MAX_PATH_BYTES => Err(PathError::TooLong),
            Err(_) => canonicalize_fully(without_query(raw)),
        }
    }
}

impl fmt::Display for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `raw` up to its query or fragment.
fn without_query(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    &raw[..end]
}

fn canonicalize_fully(raw: &[u8]) -> Result<CanonicalPath<'static>, PathError> {
    let decoded = percent_decode(raw)?;
    let text = std::str::from_utf8(&decoded).map_err(|_| PathError::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    // Compatibility forms (fullwidth letters, ligatures) and case fold to one spelling.
    let folded: String = text.nfkc().collect::<String>().to_lowercase();
    if dot_segments(&folded) > dot_segments(text) {
        // `/api/private/x/‥/‥/public` is `/api/public` once folded, but a server that
        // does not fold serves it from under `/api/private`.
        return Err(PathError::AmbiguousDots);
    }
    let plain_slashes = raw.iter().filter(|&&b| b == b'/').count();
    let separators = folded.chars().filter(|&c| c == '/' || c == '\\').count();
    let mut segments: Vec<&str> = Vec::new();
    for segment in folded.split(['/', '\\']) {
        // Matrix parameters (`login;jsessionid=...`) are not part of the resource.
        let segment = segment.split(';').next().unwrap_or("");
        if separators > plain_slashes && (segment == "." || segment == "..") {
            // `/api/z%2Fy/../v1/auth` is `/api/v1/auth` to a server that removes dot
            // segments before decoding, and `/api/z/v1/auth` to one that decodes first.
            return Err(PathError::AmbiguousSeparators);
        }
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            // Trailing dots and spaces are dropped by some servers (`login.` is `login`).
            other => {
                let trimmed = other.trim_end_matches(['.', ' ']);
                if trimmed.is_empty() {
                    // `...` or `.. `: a name here, `..` to such a server.
                    return Err(PathError::AmbiguousDots);
                }
                segments.push(trimmed);
            }
        }
    }
    let mut out = String::with_capacity(folded.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(CanonicalPath(Cow::Owned(out)))
}

/// How many `.` and `..` segments `path` has (matrix parameters aside).
fn dot_segments(path: &str) -> usize {
    path.split(['/', '\\'])
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .filter(|segment| *segment == "." || *segment == "..")
        .count()
}

/// What a byte is to [`already_canonical`].
#[derive(Clone, Copy)]
enum SimplePathByte {
    /// A lower-case ASCII letter, a digit, `-`, `_` or `~`.
    Plain,
    Slash,
    /// `?` or `#`: the path ends before it.
    QueryStart,
    /// Anything else: the path needs the full treatment.
    Other,
}

/// Every byte's [`SimplePathByte`]: one load per byte, where a `match` on ranges
/// branches several times.
const SIMPLE_PATH_BYTES: [SimplePathByte; 256] = {
    let mut table = [SimplePathByte::Other; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => SimplePathByte::Plain,
            b'/' => SimplePathByte::Slash,
            b'?' | b'#' => SimplePathByte::QueryStart,
            _ => SimplePathByte::Other,
        };
        b += 1;
    }
    table
};

/// The common case, in one pass and without a copy: the path up to any query, when it
/// is lower-case ASCII letters, digits, `-`, `_`, `~` and single slashes and starts with
/// `/` (a trailing slash is dropped).
fn already_canonical(raw: &str) -> Option<&str> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut end = bytes.len();
    let mut after_slash = true;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match SIMPLE_PATH_BYTES[usize::from(b)] {
            SimplePathByte::Plain => after_slash = false,
            SimplePathByte::Slash if after_slash => return None,
            SimplePathByte::Slash => after_slash = true,
            SimplePathByte::QueryStart => {
                end = i;
                break;
            }
            SimplePathByte::Other => return None,
        }
    }
    // Only ASCII came before `end`: it is a character boundary.
    let path = raw.get(..end)?;
    Some(if end > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    })
}

/// Decodes every `%XX`; refuses a malformed escape and an escape that decodes into
/// another escape.
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let (hi, lo) = match (raw.get(i + 1), raw.get(i + 2)) {
                (Some(&h), Some(&l)) => (hex(h), hex(l)),
                _ => (None, None),
            };
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    let double = out
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some());
    if double {
        return Err(PathError::DoubleEncoded);
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, PathError> {
        CanonicalPath::parse(raw).map(|p| p.0.into_owned())
    }

    #[test]
    fn every_spelling_of_the_login_path_is_the_same_path() {
        for raw in [
            "/api/v1/auth/login",
            "/API//v1/%61uth/login",
            "/api/v1/./auth/login",
            "/api/v1/x/../auth/login",
            "/api/v1/auth/login/",
            "/api/v1/auth/login.",
            "/api/v1/auth/login;jsessionid=abc",
            "/api/v1/auth/login?next=/admin",
            "/api/v1/auth/login#fragment",
            "/api%2Fv1%2fauth/login",
            "/api/v1\\auth\\login",
            "/\u{ff41}\u{ff50}\u{ff49}/v1/auth/login",
            "//api///v1////auth/login//",
            "/Api/V1/Auth/LOGIN",
            "/api/v1/auth/%6C%6F%67%69%6E",
        ] {
            assert_eq!(canon(raw).as_deref(), Ok("/api/v1/auth/login"), "{raw:?}");
        }
    }

    #[test]
    fn what_cannot_be_read_one_way_is_refused() {
        assert_eq!(canon("/api%252Fv1"), Err(PathError::DoubleEncoded));
        assert_eq!(canon("/api/%zz"), Err(PathError::BadEscape));
        assert_eq!(canon("/api/%4"), Err(PathError::BadEscape));
        assert_eq!(canon("/api/%ff%fe"), Err(PathError::NotUtf8));
        assert_eq!(canon("/api/%00/x"), Err(PathError::ControlCharacter));
        assert_eq!(
            canon("/api/%0d%0aSet-Cookie:x"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(canon("/../etc/passwd"), Err(PathError::AboveRoot));
        for ambiguous in [
            "/api/z%2Fy/../v1/auth/login",
            "/api/z%5cy/../v1/auth/login",
            "/api/z\\y/../v1/auth/login",
            "/api/z\u{ff0f}y/../v1/auth/login",
            "/api%2F..%2Fv1/auth",
            "/api/x%2F./auth",
        ] {
            assert_eq!(
                canon(ambiguous),
                Err(PathError::AmbiguousSeparators),
                "{ambiguous}"
            );
        }
        for ambiguous in [
            "/api/private/x/\u{2025}/\u{2025}/public",
            "/api/private/x/\u{ff0e}\u{ff0e}/public",
            "/api/private/\u{2024}/x",
            "/api/v1/x/.../auth",
            "/api/v1/x/.. /auth",
            "/api/v1/x/..%20/auth",
            "/api/v1/x/%20/auth",
        ] {
            assert_eq!(
                canon(ambiguous),
                Err(PathError::AmbiguousDots),
                "{ambiguous}"
            );
        }
        assert_eq!(canon("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(canon(&"/a".repeat(MAX_PATH_BYTES)), Err(PathError::TooLong));
        assert_eq!(
            CanonicalPath::from_bytes(b"/api/\xff"),
            Err(PathError::NotUtf8)
        );
    }

    #[test]
    fn odd_but_readable_paths() {
        assert_eq!(canon("").as_deref(), Ok("/"));
        assert_eq!(canon("/").as_deref(), Ok("/"));
        assert_eq!(canon("/./.").as_deref(), Ok("/"));
        assert_eq!(canon("/a/..").as_deref(), Ok("/"));
        assert_eq!(canon("/100%25").as_deref(), Ok("/100%"));
        assert_eq!(canon("/caf%C3%A9").as_deref(), Ok("/café"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = |s: &'static str| CanonicalPath::parse(s).expect("path");
        assert!(p("/api/v1/users").starts_with(&p("/api/v1/")));
        assert!(p("/api/v1").starts_with(&p("/api/v1/")));
        assert!(!p("/api/v10").starts_with(&p("/api/v1")));
        assert!(p("/anything").starts_with(&p("/")));
        assert!(p("/API/V1/x").starts_with(&p("/api/v1")));
    }

    #[test]
    fn the_fast_path_takes_the_common_paths_only() {
        for (raw, borrowed) in [
            ("/", "/"),
            ("/a", "/a"),
            ("/api/v1/", "/api/v1"),
            ("/a-b_c~d/0", "/a-b_c~d/0"),
            ("/x/y?next=//a/../B", "/x/y"),
            ("/x/#top", "/x"),
            ("/?q", "/"),
        ] {
            assert_eq!(already_canonical(raw), Some(borrowed), "{raw}");
        }
        for raw in ["/A", "//a", "/a//", "/a/./b", "/a%20", "a", "/a.b", ""] {
            assert_eq!(already_canonical(raw), None, "{raw}");
        }
    }

    proptest::proptest! {
        /// Whatever the fast path takes, full canonicalisation gives the same path.
        #[test]
        fn the_fast_path_agrees_with_full_canonicalisation(raw in "[/az09_~.A%?#-]{0,12}") {
            if let Some(simple) = already_canonical(&raw) {
                let full = canonicalize_fully(without_query(raw.as_bytes()));
                proptest::prop_assert_eq!(full.map(|p| p.0.into_owned()), Ok(simple.to_owned()));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut raw = Vec::new();
            for _ in 0..(seed % 48) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"/.%2Ff5c;?#aZ\\\x00\xef\xbc\xa1 ~";
                raw.push(alphabet[(seed >> 40) as usize % alphabet.len()]);
            }
            if let Ok(p) = CanonicalPath::from_bytes(&raw) {
                assert!(p.as_str().starts_with('/'));
                assert!(!p.as_str().contains("//"));
                // Canonical form is a fixed point (a decoded `%` aside, which is no
                // longer an escape).
                if !p.as_str().contains('%') {
                    assert_eq!(CanonicalPath::parse(p.as_str()).as_ref(), Ok(&p));
                }
            }
        }
    }
}
