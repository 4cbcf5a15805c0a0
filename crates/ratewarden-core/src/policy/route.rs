//! Which requests a rule applies to.

use super::RequestFacts;
use crate::path::CanonicalPath;

/// A rule's request filter; every condition given must hold, an empty one matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// The canonical path must be exactly this.
    pub path: Option<CanonicalPath<'static>>,
    /// The canonical path must be this or lie under it (whole segments).
    pub path_prefix: Option<CanonicalPath<'static>>,
    /// ...and must not lie under any of these (to carve a more specific route out of a
    /// broad one, as nginx's longest-prefix `location` does).
    pub except_path_prefixes: Vec<CanonicalPath<'static>>,
    /// The method must be one of these (upper case); empty: any.
    pub methods: Vec<String>,
    /// The host must be one of these (lower case, no port); empty: any.
    pub hosts: Vec<String>,
}

impl RouteMatch {
    /// Whether the request falls under this filter.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        if let Some(path) = &self.path {
            if request.path != path {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !request.path.starts_with(prefix) {
                return false;
            }
        }
        if self
            .except_path_prefixes
            .iter()
            .any(|p| request.path.starts_with(p))
        {
            return false;
        }
        // HEAD is served by the GET handler almost everywhere: a GET rule covers it.
        let method_fits = |m: &String| {
            m.eq_ignore_ascii_case(request.method)
                || (m == "GET" && request.method.eq_ignore_ascii_case("HEAD"))
        };
        if !self.methods.is_empty() && !self.methods.iter().any(method_fits) {
            return false;
        }
        // A request that names no host (HTTP/1.0 without `Host`) is served by whichever
        // host the upstream defaults to, which may be any of them: every host's rules
        // apply to it, so it cannot escape a limit by leaving its host out.
        if let (false, Some(host)) = (self.hosts.is_empty(), request.host) {
            if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return false;
            }
        }
        true
    }
}
