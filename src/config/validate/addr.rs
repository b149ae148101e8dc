//! Address syntax: `listen` entries (`HOST:PORT`, `[IPv6]:PORT`) and the upstream URL
//! (`postgres://[USER[:PASSWORD]@]HOST[:PORT]`). Nothing is resolved; only the form is checked.

use std::net::Ipv6Addr;

use crate::config::file::DATABASE_PORT;
use crate::config::Database;

/// How an upstream URL must look; every upstream error ends with it.
const UPSTREAM_FORM: &str = "expected postgres://[USER[:PASSWORD]@]HOST[:PORT]";

/// What `--upstream` describes: the wildcard route and, if the URL names one, a user with
/// (maybe) a password, both percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub route: Database,
    pub user: Option<(String, Option<String>)>,
}

/// Checks one `listen` entry: a host (or bracketed IPv6 address) and a numeric port.
pub fn check_listen(entry: &str) -> Result<(), String> {
    let (host, port) = match entry.strip_prefix('[') {
        Some(rest) => {
            let (address, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{entry:?}: expected [IPv6]:PORT, e.g. [::1]:6432"))?;
            if address.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{entry:?}: {address:?} is not an IPv6 address"));
            }
            (address, port)
        }
        None => entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?}: expected HOST:PORT, e.g. 127.0.0.1:6432"))?,
    };
    if host.contains(':') && !entry.starts_with('[') {
        return Err(format!(
            "{entry:?}: put an IPv6 address in brackets, e.g. [::1]:6432"
        ));
    }
    if host.is_empty() || host == "*" {
        let reason = "needs a host; use 0.0.0.0 or [::] for every interface";
        return Err(format!("{entry:?}: {reason}"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return Err(format!(
            "{entry:?}: port {port:?} is not a number from 0 to 65535"
        ));
    }
    Ok(())
}

/// Parses the upstream URL into the wildcard route and its user. `postgresql://` works too;
/// a host starting with `/` (percent-encoded as `%2F`) is a Unix socket directory.
pub fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("{e}; {UPSTREAM_FORM}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        let scheme = url.scheme();
        return Err(format!(
            "scheme {scheme:?} is not postgres or postgresql; {UPSTREAM_FORM}"
        ));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(format!(
            "has a path ({}), but the upstream URL routes every database; use [databases] to \
             map names",
            url.path()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "parameters (?…, #…) are not supported; {UPSTREAM_FORM}"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) => percent_decode(name)?,
        Some(url::Host::Ipv4(address)) => address.to_string(),
        Some(url::Host::Ipv6(address)) => address.to_string(),
        None => String::new(),
    };
    if host.is_empty() {
        return Err(format!("has no host; {UPSTREAM_FORM}"));
    }
    let port = url.port().unwrap_or(DATABASE_PORT);
    if port == 0 {
        return Err(format!(
            "port must be from 1 to 65535, not 0; {UPSTREAM_FORM}"
        ));
    }
    let password = url.password().map(percent_decode).transpose()?;
    let user = match url.username() {
        "" if password.is_some() => {
            return Err(format!("has a password but no user; {UPSTREAM_FORM}"))
        }
        "" => None,
        name => Some((percent_decode(name)?, password)),
    };
    let route = Database::at(&host, port);
    Ok(Upstream { route, user })
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        let value = hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        let value = value.ok_or_else(|| format!("bad percent-escape in {text:?}"))?;
        decoded.push(value);
        i += 3;
    }
    String::from_utf8(decoded).map_err(|_| format!("{text:?} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(url: &str) -> Option<(String, Option<String>)> {
        parse_upstream(url).unwrap().user
    }

    #[test]
    fn listen_entries() {
        for good in [
            "127.0.0.1:6432",
            "[::1]:6432",
            "0.0.0.0:0",
            "localhost:5432",
            "[::]:1",
        ] {
            assert_eq!(check_listen(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "::1:6432",
            "[::1]",
            "[nope]:1",
            ":6432",
            "*:6432",
            "h:x",
            "h:",
        ] {
            assert!(check_listen(bad).is_err(), "{bad}");
        }
        assert!(check_listen("h:70000").unwrap_err().contains("0 to 65535"));
        assert!(check_listen("::1:6432").unwrap_err().contains("brackets"));
    }

    #[test]
    fn upstream_with_credentials_is_percent_decoded() {
        let upstream =
            parse_upstream("postgres://app%40corp:p%40ss%3Aw%2Fd@db.internal:6543").unwrap();
        assert_eq!(upstream.route.host, "db.internal");
        assert_eq!(upstream.route.port, 6543);
        assert_eq!(upstream.route.dbname, None);
        let expected = ("app@corp".to_owned(), Some("p@ss:w/d".to_owned()));
        assert_eq!(upstream.user, Some(expected));
    }

    #[test]
    fn upstream_without_credentials_or_port() {
        let upstream = parse_upstream("postgresql://db.internal").unwrap();
        assert_eq!(
            (upstream.route.host.as_str(), upstream.route.port),
            ("db.internal", 5432)
        );
        assert_eq!(upstream.user, None);
        assert_eq!(user("postgres://app@db/"), Some(("app".to_owned(), None)));
    }

    #[test]
    fn upstream_hosts() {
        let host = |url: &str| parse_upstream(url).unwrap().route.host;
        assert_eq!(
            host("postgres://%2Fvar%2Frun%2Fpostgresql:5432"),
            "/var/run/postgresql"
        );
        assert_eq!(host("postgres://[::1]:5432"), "::1");
        assert_eq!(host("postgres://10.0.0.7"), "10.0.0.7");
    }

    #[test]
    fn upstream_errors() {
        let error = |url: &str| parse_upstream(url).unwrap_err();
        assert!(error("postgres://db:5432/app").contains("use [databases] to map names"));
        assert!(error("mysql://db:3306").contains("scheme \"mysql\""));
        assert!(error("db.internal:5432").contains(UPSTREAM_FORM));
        assert!(error("postgres://db?sslmode=require").contains("not supported"));
        assert!(error("postgres://:secret@db").contains("no user"));
        assert!(error("postgres://db:0").contains("not 0"));
        assert!(error("postgres://u:%ZZ@db").contains("percent-escape"));
        assert!(error("postgres://").contains("no host"));
    }
}
