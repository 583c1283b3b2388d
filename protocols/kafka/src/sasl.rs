//! SASL for the Kafka listener: PLAIN (RFC 4616) and SCRAM-SHA-256 /
//! SCRAM-SHA-512 (RFC 5802, RFC 7677), checked against the configured
//! `users` (name -> password).
//!
//! Sans-I/O: the handlers of SaslHandshake / SaslAuthenticate (and the
//! connection, for the bare tokens that follow a v0 handshake) feed client
//! tokens in and send what comes out.
//!
//! SCRAM credentials are derived from the configured passwords the first
//! time a user authenticates with a mechanism (a random salt per user and
//! process, 4096 iterations as Kafka's minimum) and kept, as Kafka keeps its
//! stored credentials: the PBKDF2 work is paid once per process, not per
//! connection. Passwords are not SASLprep-normalised (ASCII passwords are
//! unaffected).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// What SaslHandshake advertises, in Kafka's spelling.
pub(crate) const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Kafka's minimum (and librdkafka's expectation) for SCRAM iterations.
pub(crate) const SCRAM_ITERATIONS: u32 = 4096;
/// Random bytes in a server nonce (base64: 32 characters).
const SERVER_NONCE_BYTES: usize = 24;
/// Random bytes of a per-user salt.
const SALT_BYTES: usize = 16;
/// A client token larger than this cannot be a PLAIN or SCRAM message of a
/// sane user name and password.
pub(crate) const TOKEN_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ScramHash {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Scram(ScramHash),
}

impl Mechanism {
    pub(crate) fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-256" => Some(Mechanism::Scram(ScramHash::Sha256)),
            "SCRAM-SHA-512" => Some(Mechanism::Scram(ScramHash::Sha512)),
            _ => None,
        }
    }
}

/// Where a connection is in authentication.
#[derive(Debug)]
pub(crate) enum AuthState {
    /// SASL is off, or the client has authenticated.
    Authenticated,
    /// SASL is on and no SaslHandshake has been accepted yet.
    Start,
    /// The handshake chose `mechanism`; `raw`: it was a v0 handshake, so the
    /// next frames are bare SASL tokens, not SaslAuthenticate requests.
    Chosen { mechanism: Mechanism, raw: bool },
    /// SCRAM: the server-first message went out; the client-final is next.
    ScramFinal { exchange: Box<ScramExchange>, raw: bool },
}

impl AuthState {
    pub(crate) fn initial(sasl: bool) -> AuthState {
        if sasl {
            AuthState::Start
        } else {
            AuthState::Authenticated
        }
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self, AuthState::Authenticated)
    }

    /// A v0 handshake happened and the exchange is not over: the next frame
    /// is a bare token.
    pub(crate) fn expects_raw_token(&self) -> bool {
        matches!(self, AuthState::Chosen { raw: true, .. } | AuthState::ScramFinal { raw: true, .. })
    }
}

/// The outcome of feeding one client token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this token and wait for the next one.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send `token` (SCRAM's server-final, PLAIN: empty).
    Done { user: String, token: Vec<u8> },
    /// Refused; the message is for the client and the log.
    Failed(String),
}

/// Feeds one client token to the exchange in `state` (which must be
/// `Chosen` or `ScramFinal`), moving it on.
pub(crate) fn step(state: &mut AuthState, users: &Users, token: &[u8]) -> Step {
    let current = std::mem::replace(state, AuthState::Start);
    let (step, next) = match current {
        AuthState::Chosen { mechanism: Mechanism::Plain, .. } => (plain(users, token), None),
        AuthState::Chosen { mechanism: Mechanism::Scram(hash), raw } => match scram_first(hash, users, token, &server_nonce()) {
            Ok((exchange, reply)) => (Step::Continue(reply), Some(AuthState::ScramFinal { exchange: Box::new(exchange), raw })),
            Err(reason) => (Step::Failed(reason), None),
        },
        AuthState::ScramFinal { exchange, .. } => match scram_final(&exchange, token) {
            Ok(reply) => (Step::Done { user: exchange.user.clone(), token: reply }, None),
            Err(reason) => (Step::Failed(reason), None),
        },
        other @ (AuthState::Start | AuthState::Authenticated) => {
            *state = other;
            return Step::Failed("no SASL exchange is in progress".into());
        }
    };
    *state = match (&step, next) {
        (Step::Done { .. }, _) => AuthState::Authenticated,
        (_, Some(next)) => next,
        // Failed: the connection is closed; Start keeps it unauthenticated.
        (_, None) => AuthState::Start,
    };
    step
}

fn failed(mechanism: &str) -> String {
    // Kafka's wording; the same for an unknown user and a wrong password.
    format!("Authentication failed: Invalid username or password (mechanism {mechanism})")
}

/// PLAIN: `authzid NUL authcid NUL password`; an authzid must be empty or the
/// user itself (as Kafka).
fn plain(users: &Users, token: &[u8]) -> Step {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Step::Failed("Invalid SASL/PLAIN message: expected authzid NUL user NUL password".into());
    };
    let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password)) else {
        return Step::Failed(failed("PLAIN"));
    };
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Step::Failed("Authentication failed: authorization id must be empty or the user name".into());
    }
    match users.password(user) {
        Some(expected) if constant_time_eq(expected.as_bytes(), password.as_bytes()) => {
            Step::Done { user: user.to_owned(), token: Vec::new() }
        }
        _ => Step::Failed(failed("PLAIN")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The configured users and the SCRAM credentials derived from them.
pub(crate) struct Users {
    passwords: std::collections::BTreeMap<String, String>,
    scram: Mutex<HashMap<(ScramHash, String), Arc<ScramCredential>>>,
}

/// What Kafka stores per SCRAM user: salt, iterations, StoredKey, ServerKey.
#[derive(Debug)]
pub(crate) struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Users {
    pub(crate) fn new(passwords: std::collections::BTreeMap<String, String>) -> Users {
        Users { passwords, scram: Mutex::default() }
    }

    fn password(&self, user: &str) -> Option<&str> {
        self.passwords.get(user).map(String::as_str)
    }

    fn scram_credential(&self, hash: ScramHash, user: &str) -> Option<Arc<ScramCredential>> {
        let password = self.password(user)?;
        let key = (hash, user.to_owned());
        if let Some(c) = self.scram.lock().ok()?.get(&key) {
            return Some(Arc::clone(c));
        }
        // Derived outside the lock (PBKDF2 takes a while); a race derives
        // twice and keeps the first, which is harmless.
        let mut salt = vec![0u8; SALT_BYTES];
        getrandom::getrandom(&mut salt).ok()?;
        let credential = Arc::new(ScramCredential::derive(hash, password.as_bytes(), salt, SCRAM_ITERATIONS));
        Some(Arc::clone(self.scram.lock().ok()?.entry(key).or_insert(credential)))
    }
}

impl ScramCredential {
    pub(crate) fn derive(hash: ScramHash, password: &[u8], salt: Vec<u8>, iterations: u32) -> ScramCredential {
        let salted = hi(hash, password, &salt, iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        ScramCredential { stored_key: digest(hash, &client_key), server_key: hmac(hash, &salted, b"Server Key"), salt, iterations }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        ScramHash::Sha512 => Sha512::digest(data).to_vec(),
    }
}

pub(crate) fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match hash {
        ScramHash::Sha256 => run::<Hmac<Sha256>>(key, data),
        ScramHash::Sha512 => run::<Hmac<Sha512>>(key, data),
    }
}

/// PBKDF2 with HMAC as the PRF and one output block: RFC 5802's Hi().
pub(crate) fn hi(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit + Clone>(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let Ok(keyed) = <M as hmac::digest::KeyInit>::new_from_slice(password) else { return Vec::new() };
        let mut first = keyed.clone();
        first.update(salt);
        first.update(&1u32.to_be_bytes());
        let mut u = first.finalize().into_bytes();
        let mut out = u.clone();
        for _ in 1..iterations {
            let mut m = keyed.clone();
            m.update(&u);
            u = m.finalize().into_bytes();
            out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
        }
        out.to_vec()
    }
    match hash {
        ScramHash::Sha256 => run::<Hmac<Sha256>>(password, salt, iterations),
        ScramHash::Sha512 => run::<Hmac<Sha512>>(password, salt, iterations),
    }
}

fn server_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    // Without randomness the nonce would be predictable: an empty one makes
    // the exchange fail (scram_first refuses it) instead.
    if getrandom::getrandom(&mut bytes).is_err() {
        return String::new();
    }
    B64.encode(bytes)
}

fn mechanism_name(hash: ScramHash) -> &'static str {
    match hash {
        ScramHash::Sha256 => "SCRAM-SHA-256",
        ScramHash::Sha512 => "SCRAM-SHA-512",
    }
}

/// A SCRAM exchange between the server-first and the client-final message.
#[derive(Debug)]
pub(crate) struct ScramExchange {
    hash: ScramHash,
    user: String,
    /// `n,,` or `y,,` (or with `a=`): the client-final's `c=` must repeat it.
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credential: Arc<ScramCredential>,
}

/// `=2C` -> `,` and `=3D` -> `=` (RFC 5802 saslname); any other `=` is invalid.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// client-first-message -> (exchange, server-first-message).
pub(crate) fn scram_first(hash: ScramHash, users: &Users, token: &[u8], server_nonce: &str) -> Result<(ScramExchange, Vec<u8>), String> {
    let name = mechanism_name(hash);
    let invalid = |what: &str| format!("Invalid {name} client-first message: {what}");
    let msg = std::str::from_utf8(token).map_err(|_| invalid("not UTF-8"))?;
    // gs2-header = cbind-flag "," [authzid] ","
    let mut parts = msg.splitn(3, ',');
    let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("no GS2 header"));
    };
    if cbind != "n" && cbind != "y" {
        return Err(invalid("channel binding is not supported"));
    }
    let authzid = match authzid {
        "" => None,
        a => Some(a.strip_prefix("a=").and_then(decode_saslname).ok_or_else(|| invalid("bad authzid"))?),
    };
    let mut user = None;
    let mut client_nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        match (i, attr.split_at_checked(2)) {
            (0, Some(("n=", v))) => user = Some(decode_saslname(v).ok_or_else(|| invalid("bad user name"))?),
            (0, _) => return Err(invalid("the user name must come first")),
            (1, Some(("r=", v))) if !v.is_empty() && v.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') => {
                client_nonce = Some(v.to_owned());
            }
            (1, _) => return Err(invalid("the nonce must come second")),
            // Kafka's delegation tokens ride on an extension we do not serve.
            (_, _) if attr.starts_with("tokenauth=") => return Err(format!("{name}: delegation tokens are not supported")),
            _ => {} // other extensions are ignored
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else { return Err(invalid("user name or nonce missing")) };
    if authzid.as_ref().is_some_and(|a| *a != user) {
        return Err(format!("Authentication failed: authorization id must be empty or the user name ({name})"));
    }
    if server_nonce.is_empty() {
        return Err(format!("{name}: no randomness for a nonce"));
    }
    let credential = users.scram_credential(hash, &user).ok_or_else(|| failed(name))?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&credential.salt), credential.iterations);
    let gs2_header = msg[..msg.len() - bare.len()].to_owned();
    let exchange =
        ScramExchange { hash, user, gs2_header, client_first_bare: bare.to_owned(), server_first: server_first.clone(), nonce, credential };
    Ok((exchange, server_first.into_bytes()))
}

/// client-final-message -> server-final-message (`v=<signature>`).
pub(crate) fn scram_final(x: &ScramExchange, token: &[u8]) -> Result<Vec<u8>, String> {
    let name = mechanism_name(x.hash);
    let invalid = |what: &str| format!("Invalid {name} client-final message: {what}");
    let msg = std::str::from_utf8(token).map_err(|_| invalid("not UTF-8"))?;
    let i = msg.rfind(",p=").ok_or_else(|| invalid("no proof"))?;
    let (without_proof, proof) = (&msg[..i], &msg[i + 3..]);
    let mut attrs = without_proof.split(',');
    let binding = attrs.next().and_then(|a| a.strip_prefix("c=")).ok_or_else(|| invalid("no channel binding"))?;
    let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or_else(|| invalid("no nonce"))?;
    if B64.decode(binding).ok().as_deref() != Some(x.gs2_header.as_bytes()) {
        return Err(invalid("channel binding does not match the GS2 header"));
    }
    if nonce != x.nonce {
        return Err(invalid("nonce does not match"));
    }
    let proof = B64.decode(proof).map_err(|_| invalid("proof is not base64"))?;
    let auth_message = format!("{},{},{}", x.client_first_bare, x.server_first, without_proof);
    let client_signature = hmac(x.hash, &x.credential.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(failed(name));
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
    if !constant_time_eq(&digest(x.hash, &client_key), &x.credential.stored_key) {
        return Err(failed(name));
    }
    let server_signature = hmac(x.hash, &x.credential.server_key, auth_message.as_bytes());
    Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
}

/// Feeds `token` to every parser of client tokens (the fuzz target's entry).
pub(crate) fn fuzz_tokens(token: &[u8]) {
    let users = Users::new([("u".to_owned(), "p".to_owned())].into());
    for hash in [ScramHash::Sha256, ScramHash::Sha512] {
        // One iteration: the parsers are under test, not PBKDF2.
        let credential = Arc::new(ScramCredential::derive(hash, b"p", b"salt".to_vec(), 1));
        if let Ok(mut map) = users.scram.lock() {
            map.insert((hash, "u".to_owned()), credential);
        }
        let _ = scram_first(hash, &users, token, "srv");
        if let Ok((x, _)) = scram_first(hash, &users, b"n,,n=u,r=c", "srv") {
            let _ = scram_final(&x, token);
        }
    }
    let _ = plain(&users, token);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::new([("user".to_owned(), "pencil".to_owned()), ("a,b=c".to_owned(), "pw".to_owned())].into())
    }

    #[test]
    fn plain_accepts_the_password_and_refuses_anything_else() {
        let u = users();
        assert_eq!(plain(&u, b"\0user\0pencil"), Step::Done { user: "user".into(), token: vec![] });
        assert_eq!(plain(&u, b"user\0user\0pencil"), Step::Done { user: "user".into(), token: vec![] });
        assert!(matches!(plain(&u, b"\0user\0pencil2"), Step::Failed(_)));
        assert!(matches!(plain(&u, b"\0nobody\0pencil"), Step::Failed(_)));
        assert!(matches!(plain(&u, b"other\0user\0pencil"), Step::Failed(_)));
        assert!(matches!(plain(&u, b"user\0pencil"), Step::Failed(_)));
        assert!(matches!(plain(&u, b"\0user\0pencil\0"), Step::Failed(_)));
    }

    /// RFC 7677 section 3: the SCRAM-SHA-256 example exchange, byte for byte.
    #[test]
    fn scram_sha_256_matches_the_rfc_7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let credential = Arc::new(ScramCredential::derive(ScramHash::Sha256, b"pencil", salt, 4096));
        let u = users();
        u.scram.lock().expect("lock").insert((ScramHash::Sha256, "user".into()), credential);
        let (x, server_first) =
            scram_first(ScramHash::Sha256, &u, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0").expect("first");
        assert_eq!(
            String::from_utf8(server_first).expect("utf8"),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final =
            scram_final(&x, b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
                .expect("final");
        assert_eq!(String::from_utf8(server_final).expect("utf8"), "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(scram_final(
            &x,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        .is_err());
        assert!(scram_final(
            &x,
            b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        .is_err());
        assert!(scram_final(&x, b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").is_err());
    }

    #[test]
    fn scram_client_first_is_checked() {
        let u = users();
        let first = |m: &[u8]| scram_first(ScramHash::Sha512, &u, m, "srv").map(|(_, r)| r);
        assert!(first(b"p=tls-unique,,n=user,r=abc").is_err(), "channel binding");
        assert!(first(b"n,,r=abc,n=user").is_err(), "order");
        assert!(first(b"n,,n=nobody,r=abc").is_err(), "unknown user");
        assert!(first(b"n,a=other,n=user,r=abc").is_err(), "authzid of another user");
        assert!(first(b"n,,n=user,r=abc,tokenauth=true").is_err(), "delegation token");
        assert!(first(b"n,,n=a=2Cb=3Dc,r=abc").is_ok(), "escaped user name");
        assert!(first(b"n,,n=a=2Xb,r=abc").is_err(), "bad escape");
        assert!(first(b"n,a=user,n=user,r=abc").is_ok());
        assert!(first(b"y,,n=user,r=abc").is_ok());
    }

    #[test]
    fn a_full_exchange_over_step_for_both_hashes() {
        let u = users();
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            let mut state = AuthState::Chosen { mechanism: Mechanism::Scram(hash), raw: false };
            let Step::Continue(server_first) = step(&mut state, &u, b"n,,n=user,r=clientnonce") else { panic!("no server-first") };
            let final_msg = client_final(hash, "pencil", "n=user,r=clientnonce", &String::from_utf8(server_first).expect("utf8"));
            let Step::Done { user, token } = step(&mut state, &u, final_msg.as_bytes()) else { panic!("not done") };
            assert_eq!(user, "user");
            assert!(token.starts_with(b"v="));
            assert!(state.is_authenticated());

            let mut state = AuthState::Chosen { mechanism: Mechanism::Scram(hash), raw: true };
            let Step::Continue(server_first) = step(&mut state, &u, b"n,,n=user,r=clientnonce") else { panic!("no server-first") };
            assert!(state.expects_raw_token());
            let final_msg = client_final(hash, "wrong", "n=user,r=clientnonce", &String::from_utf8(server_first).expect("utf8"));
            assert!(matches!(step(&mut state, &u, final_msg.as_bytes()), Step::Failed(_)));
            assert!(!state.is_authenticated());
        }
    }

    /// The client side of SCRAM (as tests and clients compute it).
    pub(crate) fn client_final(hash: ScramHash, password: &str, client_first_bare: &str, server_first: &str) -> String {
        let attr = |k: &str| server_first.split(',').find_map(|a| a.strip_prefix(k)).expect("attribute").to_owned();
        let (nonce, salt, iterations) = (attr("r="), B64.decode(attr("s=")).expect("salt"), attr("i=").parse().expect("i"));
        let salted = hi(hash, password.as_bytes(), &salt, iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(hash, &digest(hash, &client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }
}
