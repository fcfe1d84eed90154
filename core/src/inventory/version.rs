//! Version order, per ecosystem, as each ecosystem's own tools order versions: dpkg's
//! (`dpkg --compare-versions`), apk's (apk-tools), PEP 440's (Python's `packaging`), and
//! SemVer 2.0's precedence (npm and crates.io). An advisory's ranges are only as right as
//! this order: the tests check dpkg, PEP 440 and npm against their reference
//! implementations on hundreds of pairs (`tests/tests/versions.rs`).

use std::cmp::Ordering;

use super::Ecosystem;

/// `a` against `b` in `ecosystem`'s order.
pub fn compare(ecosystem: Ecosystem, a: &str, b: &str) -> Ordering {
    match ecosystem {
        Ecosystem::Debian => dpkg(a, b),
        Ecosystem::Alpine => apk(a, b),
        Ecosystem::PyPI => pep440(a, b),
        Ecosystem::Npm | Ecosystem::CratesIo => semver(a, b),
    }
}

// ---- dpkg ----

/// dpkg's order: `[epoch:]upstream[-revision]`, epochs numerically, then upstream and
/// revision by alternating non-digit runs (`~` before everything, even the end; letters
/// before other characters) and digit runs (numerically).
pub fn dpkg(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = dpkg_parts(a);
    let (eb, ub, rb) = dpkg_parts(b);
    ea.cmp(&eb)
        .then_with(|| dpkg_part(ua, ub))
        .then_with(|| dpkg_part(ra, rb))
}

fn dpkg_parts(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

fn dpkg_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(b'~') => -1,
        Some(c) => c as i32 + 256,
    }
}

fn dpkg_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (oa, ob) = (dpkg_order(a.get(i).copied()), dpkg_order(b.get(j).copied()));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

// ---- apk ----

/// One piece of an apk version (`1.2.3a_rc1_p2-r3`). Where two versions have pieces of
/// different kinds at the same place, apk-tools ranks the version whose piece comes later
/// in the grammar (digits, letter, suffix, revision, end) lower, except that a pre-release
/// suffix is lower than anything: the variants are declared in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ApkPiece {
    /// `_alpha`, `_beta`, `_pre`, `_rc` (before the release), with their number.
    PreSuffix(u8, u64),
    /// The end of the version.
    End,
    Revision(u64),
    /// `_cvs`, `_svn`, `_git`, `_hg`, `_p` (after the release), with their number.
    PostSuffix(u8, u64),
    Letter(u8),
    /// A number; a component with leading zeros compares as a fraction (`1.01` < `1.1`).
    Number(u64, u64),
}

fn apk_pieces(v: &str) -> Vec<ApkPiece> {
    let b = v.trim().as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let number = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        std::str::from_utf8(&b[start..*i])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            let start = i;
            let n = number(&mut i);
            // Leading zeros in a component after the first: compare as a decimal fraction.
            let zeros = b[start..i].iter().take_while(|&&d| d == b'0').count() as u64;
            let fraction = if !out.is_empty() && zeros > 0 {
                zeros
            } else {
                0
            };
            out.push(ApkPiece::Number(u64::MAX - fraction, n));
        } else if c.is_ascii_alphabetic() {
            out.push(ApkPiece::Letter(c));
            i += 1;
        } else if c == b'_' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name = &b[start..i];
            let n = number(&mut i);
            const PRE: [&[u8]; 4] = [b"alpha", b"beta", b"pre", b"rc"];
            const POST: [&[u8]; 5] = [b"cvs", b"svn", b"git", b"hg", b"p"];
            if let Some(k) = PRE.iter().position(|s| *s == name) {
                out.push(ApkPiece::PreSuffix(k as u8, n));
            } else if let Some(k) = POST.iter().position(|s| *s == name) {
                out.push(ApkPiece::PostSuffix(k as u8, n));
            }
        } else if c == b'-' && b.get(i + 1) == Some(&b'r') {
            i += 2;
            out.push(ApkPiece::Revision(number(&mut i)));
        } else {
            i += 1;
        }
    }
    out.push(ApkPiece::End);
    out
}

/// apk-tools' order: numbers component by component (one with leading zeros as a
/// fraction), then a letter, then suffixes (pre-release ones before the plain release,
/// post-release ones after), then `-rN` (an explicit `-r0` after none).
pub fn apk(a: &str, b: &str) -> Ordering {
    apk_pieces(a).cmp(&apk_pieces(b))
}

// ---- PEP 440 ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pep440 {
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<LocalPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LocalPart {
    // Strings sort before numbers in a local version segment.
    Text(String),
    Number(u64),
}

/// Parses PEP 440's normal and accepted forms (`1.0rc1`, `1.0-post2`, `1.0.dev3`,
/// `v1.0`, `1.0+ubuntu.1`); `None` for what is not a PEP 440 version.
fn pep440_parse(v: &str) -> Option<Pep440> {
    let s = v.trim().to_ascii_lowercase();
    let s = s.strip_prefix('v').unwrap_or(&s);
    let (public, local) = match s.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (s, None),
    };
    let b = public.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| -> Option<u64> {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i == start {
            None
        } else {
            public[start..*i].parse().ok()
        }
    };
    let sep = |i: &mut usize| {
        if *i < b.len() && matches!(b[*i], b'.' | b'-' | b'_') {
            *i += 1;
        }
    };
    let mut epoch = 0;
    let first = digits(&mut i)?;
    let mut release = vec![first];
    if i < b.len() && b[i] == b'!' {
        i += 1;
        epoch = first;
        release = vec![digits(&mut i)?];
    }
    while i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        release.push(digits(&mut i)?);
    }
    let word = |i: &mut usize, words: &[(&str, u8)]| -> Option<u8> {
        for (w, k) in words {
            if public[*i..].starts_with(w) {
                *i += w.len();
                return Some(*k);
            }
        }
        None
    };
    let mut pre = None;
    let save = i;
    sep(&mut i);
    let pre_words = [
        ("alpha", 0),
        ("beta", 1),
        ("preview", 2),
        ("pre", 2),
        ("rc", 2),
        ("a", 0),
        ("b", 1),
        ("c", 2),
    ];
    if let Some(k) = word(&mut i, &pre_words) {
        sep(&mut i);
        pre = Some((k, digits(&mut i).unwrap_or(0)));
    } else {
        i = save;
    }
    let mut post = None;
    let save = i;
    if i < b.len() && b[i] == b'-' && b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
        post = digits(&mut i);
    } else {
        sep(&mut i);
        if word(&mut i, &[("post", 0), ("rev", 0), ("r", 0)]).is_some() {
            sep(&mut i);
            post = Some(digits(&mut i).unwrap_or(0));
        } else {
            i = save;
        }
    }
    let mut dev = None;
    let save = i;
    sep(&mut i);
    if word(&mut i, &[("dev", 0)]).is_some() {
        sep(&mut i);
        dev = Some(digits(&mut i).unwrap_or(0));
    } else {
        i = save;
    }
    if i != b.len() {
        return None;
    }
    let local = match local {
        None => Vec::new(),
        Some(l) => {
            let parts: Vec<&str> = l.split(['.', '-', '_']).collect();
            if parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_alphanumeric()))
            {
                return None;
            }
            parts
                .into_iter()
                .map(|p| match p.parse::<u64>() {
                    Ok(n) if p.bytes().all(|c| c.is_ascii_digit()) => LocalPart::Number(n),
                    _ => LocalPart::Text(p.to_owned()),
                })
                .collect()
        }
    };
    Some(Pep440 {
        epoch,
        release,
        pre,
        post,
        dev,
        local,
    })
}

/// The sort key `packaging` uses: trailing zeros of the release dropped; a dev release
/// with neither pre nor post release sorts before every pre-release of its release.
fn pep440_key(v: &Pep440) -> impl Ord {
    let mut release = v.release.clone();
    while release.len() > 1 && release.last() == Some(&0) {
        release.pop();
    }
    // pre: (0 = before everything: a bare .devN; 1 = a pre-release; 2 = none).
    let pre = match (v.pre, v.post, v.dev) {
        (None, None, Some(_)) => (0, 0, 0),
        (Some((k, n)), _, _) => (1, k, n),
        (None, _, _) => (2, 0, 0),
    };
    let post = v.post.map(|n| (1, n)).unwrap_or((0, 0));
    let dev = v.dev.map(|n| (0, n)).unwrap_or((1, 0));
    (v.epoch, release, pre, post, dev, v.local.clone())
}

/// PEP 440's order; a version that does not parse sorts before every one that does
/// (as `packaging`'s legacy versions did), and two such by their text.
pub fn pep440(a: &str, b: &str) -> Ordering {
    match (pep440_parse(a), pep440_parse(b)) {
        (Some(x), Some(y)) => pep440_key(&x).cmp(&pep440_key(&y)),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

// ---- SemVer ----

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ident<'a> {
    // Numeric identifiers have lower precedence than alphanumeric ones.
    Number(u64),
    Text(&'a str),
}

/// SemVer 2.0 precedence (build metadata ignored), as npm and Cargo order versions; a
/// leading `v` or `=` is tolerated (npm's loose form). Missing minor or patch count as 0.
pub fn semver(a: &str, b: &str) -> Ordering {
    fn parts(v: &str) -> (Vec<u64>, Option<Vec<Ident<'_>>>) {
        let v = v.trim().trim_start_matches(['v', '=']);
        let v = v.split_once('+').map(|(p, _)| p).unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let mut nums: Vec<u64> = core.split('.').map(|n| n.parse().unwrap_or(0)).collect();
        nums.resize(3, 0);
        let pre = pre.map(|p| {
            p.split('.')
                .map(|id| match id.parse::<u64>() {
                    Ok(n) if id.bytes().all(|c| c.is_ascii_digit()) => Ident::Number(n),
                    _ => Ident::Text(id),
                })
                .collect()
        });
        (nums, pre)
    }
    let (na, pa) = parts(a);
    let (nb, pb) = parts(b);
    na.cmp(&nb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        // A pre-release comes before its release.
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(&y),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_orders_epochs_tildes_and_revisions() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0-1", "1.0-1+deb12u1", Less),
            ("7.88.1-10+deb12u4", "7.88.1-10+deb12u5", Less),
            ("1.0a", "1.0+", Less),
            ("1.01", "1.1", Equal),
            ("1.0.0", "1.0", Greater),
            ("2:9.0.1378-2", "2:9.0.1378-2", Equal),
        ] {
            assert_eq!(dpkg(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn apk_orders_suffixes_letters_and_revisions() {
        let ordered = [
            "1.0_alpha1",
            "1.0_beta",
            "1.0_rc1",
            "1.0",
            "1.0-r1",
            "1.0_p1",
            "1.0a",
            "1.0.1",
            "1.1",
            "1.10",
        ];
        for w in ordered.windows(2) {
            assert_eq!(apk(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
            assert_eq!(apk(w[1], w[0]), Greater, "{} > {}", w[1], w[0]);
        }
        assert_eq!(apk("1.2.4-r2", "1.2.4-r2"), Equal);
        assert_eq!(apk("1.36.1-r5", "1.36.1-r15"), Less);
        assert_eq!(apk("1.01", "1.1"), Less);
        // apk-tools' own rules where Gentoo's (and so univers') differ: an explicit -r0
        // sorts after none, and leading zeros make a fraction (1.001 < 1.0 < 1.01).
        assert_eq!(apk("1.0", "1.0-r0"), Less);
        assert_eq!(apk("1.001", "1.0"), Less);
        assert_eq!(apk("1.0", "1.01"), Less);
    }

    #[test]
    fn pep440_orders_pre_post_dev_and_local_releases() {
        let ordered = [
            "1.0.dev0",
            "1.0a1.dev1",
            "1.0a1",
            "1.0b2",
            "1.0rc1",
            "1.0",
            "1.0+local.1",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "1!0.1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(pep440(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(pep440("1.0", "1.0.0"), Equal);
        assert_eq!(pep440("1.0-1", "1.0.post1"), Equal);
        assert_eq!(pep440("v1.0RC1", "1.0rc1"), Equal);
    }

    #[test]
    fn semver_precedence_ignores_build_metadata() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
        ];
        for w in ordered.windows(2) {
            assert_eq!(semver(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(semver("1.0.0+build.1", "1.0.0+build.2"), Equal);
        assert_eq!(semver("v4.17.21", "4.17.21"), Equal);
    }
}
