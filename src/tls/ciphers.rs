//! gunicorn's `ciphers` (an OpenSSL cipher list, as `SSLContext.set_ciphers`
//! takes it) mapped to the cipher suites rustls offers.
//!
//! rustls (ring) has nine suites: three TLS 1.3 and six TLS 1.2 ECDHE
//! AEAD ones. Each has its OpenSSL name, its IANA name and the OpenSSL
//! keywords that select it (`ECDHE`, `AESGCM`, `aRSA`, `HIGH`, ...). A list
//! is read as OpenSSL reads it, entry by entry (`:`, `,` or space between
//! them): `A+B` selects the suites that have both; `!X` removes X for good,
//! `-X` removes it for now, `+X` moves it to the end; `@STRENGTH` and
//! `@SECLEVEL=n` are accepted (rustls' suites are all strong). As with
//! OpenSSL 1.1.1+, the list decides the TLS 1.2 suites; the TLS 1.3 suites
//! stay on unless the list names some of them (then only those).
//!
//! Refused at start, naming the entry: a name neither OpenSSL nor rustls
//! knows, and an entry that adds suites but selects none rustls has (a
//! legacy suite such as `AES128-SHA` or `DHE-RSA-AES128-GCM-SHA256`, or
//! `DHE+AESGCM`): such a server would silently offer less than the config
//! says. Removing something rustls never offers (`!aNULL`, `!RC4`, `!MD5`)
//! is accepted: it is already true.

use rustls::crypto::ring::cipher_suite as cs;
use rustls::SupportedCipherSuite;

struct Suite {
    suite: SupportedCipherSuite,
    openssl: &'static str,
    iana: &'static str,
    tags: &'static [&'static str],
}

const TLS13_TAGS: &[&str] = &["TLSv1.3", "AEAD", "HIGH"];

fn suites() -> [Suite; 9] {
    [
        Suite {
            suite: cs::TLS13_AES_256_GCM_SHA384,
            openssl: "TLS_AES_256_GCM_SHA384",
            iana: "TLS_AES_256_GCM_SHA384",
            tags: TLS13_TAGS,
        },
        Suite {
            suite: cs::TLS13_AES_128_GCM_SHA256,
            openssl: "TLS_AES_128_GCM_SHA256",
            iana: "TLS_AES_128_GCM_SHA256",
            tags: TLS13_TAGS,
        },
        Suite {
            suite: cs::TLS13_CHACHA20_POLY1305_SHA256,
            openssl: "TLS_CHACHA20_POLY1305_SHA256",
            iana: "TLS_CHACHA20_POLY1305_SHA256",
            tags: TLS13_TAGS,
        },
        Suite {
            suite: cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            openssl: "ECDHE-ECDSA-AES256-GCM-SHA384",
            iana: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            tags: &["ECDSA", "aECDSA", "AES", "AES256", "AESGCM", "SHA384"],
        },
        Suite {
            suite: cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            openssl: "ECDHE-ECDSA-AES128-GCM-SHA256",
            iana: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            tags: &["ECDSA", "aECDSA", "AES", "AES128", "AESGCM", "SHA256"],
        },
        Suite {
            suite: cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            openssl: "ECDHE-ECDSA-CHACHA20-POLY1305",
            iana: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            tags: &["ECDSA", "aECDSA", "CHACHA20", "SHA256"],
        },
        Suite {
            suite: cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            openssl: "ECDHE-RSA-AES256-GCM-SHA384",
            iana: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            tags: &["RSA", "aRSA", "AES", "AES256", "AESGCM", "SHA384"],
        },
        Suite {
            suite: cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            openssl: "ECDHE-RSA-AES128-GCM-SHA256",
            iana: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            tags: &["RSA", "aRSA", "AES", "AES128", "AESGCM", "SHA256"],
        },
        Suite {
            suite: cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            openssl: "ECDHE-RSA-CHACHA20-POLY1305",
            iana: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            tags: &["RSA", "aRSA", "CHACHA20", "SHA256"],
        },
    ]
}

/// Keywords every TLS 1.2 suite of rustls has.
const TLS12_COMMON: &[&str] = &[
    "ECDHE", "EECDH", "kECDHE", "kEECDH", "ECDH", "AEAD", "HIGH", "TLSv1.2", "SSLv3", "TLSv1",
];

/// Keywords that select every suite OpenSSL's default list would offer.
const EVERYTHING: &[&str] = &[
    "ALL",
    "DEFAULT",
    "COMPLEMENTOFDEFAULT",
    "TLS",
    "FIPS",
    "SUITEB128",
];

/// OpenSSL names of things rustls never offers: accepted in a removal
/// (`!aNULL`), refused in an addition (see the module doc).
const ABSENT: &[&str] = &[
    "aNULL",
    "eNULL",
    "NULL",
    "COMPLEMENTOFALL",
    "MD5",
    "RC4",
    "DES",
    "3DES",
    "IDEA",
    "SEED",
    "RC2",
    "EXP",
    "EXPORT",
    "LOW",
    "MEDIUM",
    "PSK",
    "aPSK",
    "kPSK",
    "ECDHEPSK",
    "DHEPSK",
    "RSAPSK",
    "SRP",
    "aSRP",
    "kSRP",
    "DSS",
    "aDSS",
    "DHE",
    "EDH",
    "kDHE",
    "kEDH",
    "DH",
    "kDH",
    "ADH",
    "AECDH",
    "aECDH",
    "kRSA",
    "CAMELLIA",
    "CAMELLIA128",
    "CAMELLIA256",
    "ARIA",
    "ARIA128",
    "ARIA256",
    "ARIAGCM",
    "AESCCM",
    "AESCCM8",
    "CCM",
    "SHA1",
    "SHA",
    "CBC",
    "GOST",
    "aGOST",
    "kGOST",
    "SSLv2",
    "TLSv1.0",
    "TLSv1.1",
    "kECDHr",
    "kECDHe",
    "aDH",
    "kDHr",
    "kDHd",
];

/// What `ciphers` selects: the suites in preference order.
#[derive(Debug)]
pub struct Selection {
    pub suites: Vec<SupportedCipherSuite>,
}

fn has(s: &Suite, tag: &str) -> bool {
    if s.openssl == tag || s.iana == tag || EVERYTHING.contains(&tag) {
        return true;
    }
    if s.tags.contains(&tag) {
        return true;
    }
    // The TLS 1.2 keywords and ECDHE apply to the six TLS 1.2 suites.
    !s.tags.contains(&"TLSv1.3") && TLS12_COMMON.contains(&tag)
}

fn known(tag: &str, all: &[Suite]) -> bool {
    EVERYTHING.contains(&tag)
        || TLS12_COMMON.contains(&tag)
        || ABSENT.contains(&tag)
        || all
            .iter()
            .any(|s| s.openssl == tag || s.iana == tag || s.tags.contains(&tag))
}

/// The suites an OpenSSL cipher list selects. `Err` names the entry that
/// cannot be honoured.
pub fn select(list: &str) -> Result<Selection, String> {
    let all = suites();
    let offered = || all.iter().map(|s| s.openssl).collect::<Vec<_>>().join(", ");
    // Indexes into `all`, in order; `banned` are removed for good (`!`).
    let mut chosen: Vec<usize> = Vec::new();
    let mut banned: Vec<usize> = Vec::new();
    let mut tls13_named = false;
    for entry in list
        .split([':', ',', ' ', ';'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if entry.starts_with('@') {
            // @STRENGTH, @SECLEVEL=n: ordering and security levels; every
            // suite rustls has passes any of them.
            let word = entry.split('=').next().unwrap_or(entry);
            if word != "@STRENGTH" && word != "@SECLEVEL" {
                return Err(format!(
                    "ciphers: '{entry}' is not an OpenSSL cipher list keyword"
                ));
            }
            continue;
        }
        let (op, spec) = match entry.as_bytes()[0] {
            b'!' | b'-' | b'+' => (entry.as_bytes()[0], &entry[1..]),
            _ => (b' ', entry),
        };
        let tags: Vec<&str> = spec.split('+').filter(|t| !t.is_empty()).collect();
        if tags.is_empty() {
            return Err(format!("ciphers: empty entry '{entry}'"));
        }
        if let Some(bad) = tags.iter().find(|t| !known(t, &all)) {
            return Err(format!(
                "ciphers: '{bad}' (in '{entry}') is not a cipher or keyword ferrocorn can map \
                 to a rustls cipher suite; rustls offers: {}",
                offered()
            ));
        }
        let matching: Vec<usize> = (0..all.len())
            .filter(|&i| tags.iter().all(|t| has(&all[i], t)))
            .collect();
        match op {
            b'!' => {
                banned.extend(&matching);
                chosen.retain(|i| !matching.contains(i));
            }
            b'-' => chosen.retain(|i| !matching.contains(i)),
            b'+' => {
                let (moved, kept): (Vec<usize>, Vec<usize>) =
                    chosen.iter().partition(|i| matching.contains(i));
                chosen = kept;
                chosen.extend(moved);
            }
            _ => {
                if matching.is_empty() {
                    return Err(format!(
                        "ciphers: '{entry}' selects no cipher suite rustls offers (rustls has \
                         TLS 1.3 and ECDHE AEAD TLS 1.2 suites only: {}); remove it or name one \
                         of these",
                        offered()
                    ));
                }
                if matching.iter().any(|&i| all[i].tags.contains(&"TLSv1.3"))
                    && !EVERYTHING.contains(&spec)
                    && tags
                        .iter()
                        .any(|t| all.iter().any(|s| s.openssl == *t || s.iana == *t))
                {
                    tls13_named = true;
                }
                for i in matching {
                    if !chosen.contains(&i) && !banned.contains(&i) {
                        chosen.push(i);
                    }
                }
            }
        }
    }
    // OpenSSL's set_ciphers leaves the TLS 1.3 suites alone unless named.
    let is13 = |i: &usize| all[*i].tags.contains(&"TLSv1.3");
    let mut order: Vec<usize> = Vec::new();
    if tls13_named {
        order.extend(chosen.iter().filter(|i| is13(i)));
    } else {
        order.extend((0..all.len()).filter(|i| is13(i) && !banned.contains(i)));
    }
    order.extend(chosen.iter().filter(|i| !is13(i)));
    if order.is_empty() {
        return Err(format!(
            "ciphers: '{list}' leaves no cipher suite; rustls offers: {}",
            offered()
        ));
    }
    Ok(Selection {
        suites: order.into_iter().map(|i| all[i].suite).collect(),
    })
}

/// The suites served when `ciphers` is not set, in the server's order of
/// preference: every suite, with AES-128-GCM before AES-256-GCM in each
/// group (as Go's crypto/tls). A TLS 1.3 handshake with a SHA-256 suite
/// costs the server about a quarter less than with the SHA-384 one
/// (HKDF over SHA-256 has the CPU's SHA instructions; SHA-384 has none),
/// and AES-128 is as safe a choice for the life of a connection.
pub fn default_order() -> Vec<SupportedCipherSuite> {
    let all = suites();
    let rank = |s: &Suite| {
        let tls12 = !s.tags.contains(&"TLSv1.3");
        let aes128 = s.iana.contains("AES_128");
        (tls12, s.tags.contains(&"RSA"), !aes128)
    };
    let mut order: Vec<&Suite> = all.iter().collect();
    // A stable sort: the table's order stays within equal ranks.
    order.sort_by_key(|s| rank(s));
    order.into_iter().map(|s| s.suite).collect()
}

/// The OpenSSL name of a rustls suite (for messages).
pub fn openssl_name(s: SupportedCipherSuite) -> String {
    suites()
        .iter()
        .find(|x| x.suite.suite() == s.suite())
        .map(|x| x.openssl.to_owned())
        .unwrap_or_else(|| format!("{:?}", s.suite()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<String> {
        select(list)
            .expect(list)
            .suites
            .into_iter()
            .map(openssl_name)
            .collect()
    }

    #[test]
    fn default_order_puts_aes128_first() {
        let v: Vec<String> = default_order().into_iter().map(openssl_name).collect();
        assert_eq!(
            v,
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-RSA-CHACHA20-POLY1305"
            ]
        );
    }

    #[test]
    fn single_names_and_keywords() {
        assert_eq!(
            names("ECDHE-RSA-AES128-GCM-SHA256"),
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256"
            ]
        );
        assert_eq!(names("TLS_AES_128_GCM_SHA256"), ["TLS_AES_128_GCM_SHA256"]);
        assert_eq!(
            names("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"),
            ["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]
        );
        assert_eq!(names("TLS").len(), 9);
        assert_eq!(names("DEFAULT:!aNULL:!MD5:!RC4").len(), 9);
        let v = names("ECDHE+AESGCM:ECDHE+CHACHA20:!ECDSA");
        assert_eq!(
            v[3..],
            [
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305"
            ]
        );
        assert_eq!(
            names("HIGH:-AES256:+CHACHA20:@STRENGTH:@SECLEVEL=2").len(),
            7
        );
    }

    #[test]
    fn unmappable_names_are_errors_naming_them() {
        for (list, name) in [
            ("AES128-SHA", "AES128-SHA"),
            (
                "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256",
                "DHE-RSA",
            ),
            ("NOT-A-CIPHER", "NOT-A-CIPHER"),
            ("ECDHE+FOO", "FOO"),
            ("DHE+AESGCM", "DHE+AESGCM"),
            ("ALL:!ECDHE:!TLSv1.3", "leaves no cipher"),
        ] {
            let e = select(list).expect_err(list);
            assert!(e.contains(name), "{list}: {e}");
        }
    }
}
