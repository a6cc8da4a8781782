//! Who is signed in to the console, and what they may do.
//!
//! Sign-in without an identity provider: root (or the admin group) runs `sluice ui
//! login`, which asks the daemon over the control socket for a one-time URL. The URL's
//! token works once, within its validity (5 minutes by default), and makes a browser
//! session for the person who asked, with their uid: the rule that nobody approves
//! their own statement then holds by uid, as for the CLI.
//!
//! Browser sessions live in memory (a daemon restart signs everyone out) and in a
//! cookie that is HttpOnly and SameSite=Strict. Each session has its own CSRF token,
//! which every state-changing request must echo in a header; the cookie alone is never
//! enough.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::control::PeerInfo;

/// The session cookie's name.
pub const COOKIE: &str = "sluice_console";
/// The header a state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-sluice-csrf";
/// How long a one-time sign-in URL works when `sluice ui login` names no validity.
pub const DEFAULT_LOGIN_VALIDITY: Duration = Duration::from_secs(300);
/// The longest validity a sign-in URL may be given.
pub const MAX_LOGIN_VALIDITY: Duration = Duration::from_secs(3600);
/// How long a browser session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sign-in URLs and browser sessions kept at once; the oldest go first beyond it.
const MAX_ENTRIES: usize = 10_000;

/// What a signed-in person may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees sessions, timelines, recordings, approvals, grants and status.
    Viewer,
    /// Also approves and denies held operations, creates and revokes grants.
    Approver,
}

/// The body of `POST /v1/ui/login`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Sign in as a viewer, who cannot decide anything.
    #[serde(default)]
    pub viewer: bool,
    /// How long the URL works; 300 s by default, at most 3600.
    #[serde(default)]
    pub valid_for_seconds: Option<u64>,
}

/// The answer of `POST /v1/ui/login`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// Open it once, in the browser that should be signed in.
    pub url: String,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A signed-in person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebUser {
    /// The uid of whoever ran `sluice ui login`.
    pub uid: u32,
    #[serde(skip)]
    pub gid: u32,
    /// Their user name, when it resolves.
    pub name: Option<String>,
    pub role: Role,
    /// `local` (a one-time URL) or `oidc` (an identity provider).
    pub method: &'static str,
    /// Who the identity provider says this is (`oidc` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::approvals::ApproverIdentity>,
}

impl WebUser {
    /// The peer the control routes see for this person's requests.
    pub fn peer(&self) -> PeerInfo {
        PeerInfo {
            uid: self.uid,
            gid: self.gid,
            pid: None,
            user: self.name.clone(),
            cgroup: None,
            identity: self.identity.clone().map(Box::new),
        }
    }

    /// `alice (uid 1000)`.
    pub fn display_name(&self) -> String {
        self.peer().display_name()
    }
}

/// A browser session.
#[derive(Clone, Debug)]
pub struct WebSession {
    pub user: WebUser,
    /// Echoed by every state-changing request in [`CSRF_HEADER`].
    pub csrf: String,
    expires: Instant,
}

impl WebSession {
    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let (a, b) = (presented.as_bytes(), self.csrf.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

struct PendingLogin {
    user: WebUser,
    expires: Instant,
}

/// Pending sign-in URLs and open browser sessions.
pub struct SignIns {
    base_url: String,
    logins: Mutex<HashMap<String, PendingLogin>>,
    sessions: Mutex<HashMap<String, WebSession>>,
}

impl SignIns {
    /// Sign-in URLs start with `base_url` (no trailing `/`).
    pub fn new(base_url: String) -> Self {
        Self {
            base_url,
            logins: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the session cookie needs `Secure` (the console is reached over HTTPS).
    pub fn secure(&self) -> bool {
        self.base_url.starts_with("https://")
    }

    /// A one-time sign-in URL for `peer` (an authorized control peer).
    pub fn issue(&self, peer: &PeerInfo, request: &LoginRequest) -> Result<LoginAnswer, String> {
        let validity = match request.valid_for_seconds {
            None => DEFAULT_LOGIN_VALIDITY,
            Some(0) => return Err("valid_for_seconds must be at least 1".into()),
            Some(seconds) if Duration::from_secs(seconds) > MAX_LOGIN_VALIDITY => {
                return Err(format!(
                    "valid_for_seconds must be at most {}",
                    MAX_LOGIN_VALIDITY.as_secs()
                ));
            }
            Some(seconds) => Duration::from_secs(seconds),
        };
        let role = if request.viewer {
            Role::Viewer
        } else {
            Role::Approver
        };
        let token = random_token()?;
        let now = Instant::now();
        {
            let mut logins = lock(&self.logins);
            logins.retain(|_, login| login.expires > now);
            if logins.len() >= MAX_ENTRIES {
                return Err("too many unused sign-in URLs; wait until some expire".into());
            }
            logins.insert(
                token.clone(),
                PendingLogin {
                    user: WebUser {
                        uid: peer.uid,
                        gid: peer.gid,
                        name: peer.user.clone(),
                        role,
                        method: "local",
                        identity: None,
                    },
                    expires: now + validity,
                },
            );
        }
        tracing::info!(peer = %peer.display_name(), ?role, valid_s = validity.as_secs(), "console sign-in URL issued");
        Ok(LoginAnswer {
            url: format!("{}/login?token={token}", self.base_url),
            role,
            expires_at: OffsetDateTime::now_utc() + validity,
        })
    }

    /// Uses up sign-in token `token`: a new session and its id, or `None` when the
    /// token is unknown, used or expired.
    pub fn redeem(&self, token: &str) -> Option<(String, WebSession)> {
        let now = Instant::now();
        let login = lock(&self.logins).remove(token)?;
        if login.expires <= now {
            return None;
        }
        self.start_session(login.user)
    }

    /// A new browser session for `user` (signed in one way or another), and its id.
    pub fn start_session(&self, user: WebUser) -> Option<(String, WebSession)> {
        let now = Instant::now();
        let id = random_token().ok()?;
        let session = WebSession {
            user,
            csrf: random_token().ok()?,
            expires: now + SESSION_LIFETIME,
        };
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_ENTRIES {
            return None;
        }
        sessions.insert(id.clone(), session.clone());
        tracing::info!(user = %session.user.display_name(), role = ?session.user.role, "console sign-in");
        Some((id, session))
    }

    /// The live session with cookie value `id`.
    pub fn session(&self, id: &str) -> Option<WebSession> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Signs session `id` out.
    pub fn end(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// The `Set-Cookie` value that carries session `id`.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_LIFETIME.as_secs(),
            if self.secure() { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clearing_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure() { "; Secure" } else { "" }
        )
    }
}

/// The session id in a `Cookie` header's value, if any.
pub fn session_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 256 random bits, base64url.
pub(crate) fn random_token() -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PeerInfo {
        PeerInfo {
            uid: 0,
            gid: 0,
            pid: Some(1),
            user: Some("root".into()),
            cgroup: None,
            identity: None,
        }
    }

    fn token_of(answer: &LoginAnswer) -> String {
        answer
            .url
            .split_once("token=")
            .expect("a token")
            .1
            .to_owned()
    }

    #[test]
    fn a_sign_in_url_works_once() {
        let sign_ins = SignIns::new("http://127.0.0.1:9470".into());
        let answer = sign_ins
            .issue(&root(), &LoginRequest::default())
            .expect("issued");
        assert!(answer.url.starts_with("http://127.0.0.1:9470/login?token="));
        assert_eq!(answer.role, Role::Approver);
        let token = token_of(&answer);
        let (id, session) = sign_ins.redeem(&token).expect("first use");
        assert_eq!(session.user.uid, 0);
        assert!(sign_ins.redeem(&token).is_none(), "second use");
        assert!(sign_ins.session(&id).is_some());
        sign_ins.end(&id);
        assert!(sign_ins.session(&id).is_none());
    }

    #[test]
    fn an_expired_url_is_refused_and_bounds_hold() {
        let sign_ins = SignIns::new("http://127.0.0.1:9470".into());
        let answer = sign_ins
            .issue(
                &root(),
                &LoginRequest {
                    viewer: true,
                    valid_for_seconds: Some(1),
                },
            )
            .expect("issued");
        assert_eq!(answer.role, Role::Viewer);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(sign_ins.redeem(&token_of(&answer)).is_none());
        for bad in [0, 3601] {
            let request = LoginRequest {
                viewer: false,
                valid_for_seconds: Some(bad),
            };
            assert!(sign_ins.issue(&root(), &request).is_err(), "{bad}");
        }
    }

    #[test]
    fn csrf_tokens_and_cookies() {
        let sign_ins = SignIns::new("https://console.example".into());
        let answer = sign_ins
            .issue(&root(), &LoginRequest::default())
            .expect("issued");
        let (id, session) = sign_ins.redeem(&token_of(&answer)).expect("redeemed");
        assert!(session.csrf_matches(Some(&session.csrf.clone())));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("x")));
        let cookie = sign_ins.cookie(&id);
        assert!(cookie.contains("HttpOnly; SameSite=Strict"), "{cookie}");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        let header = format!("a=b; {COOKIE}={id}; c=d");
        assert_eq!(session_cookie(&header), Some(id.as_str()));
        assert_eq!(session_cookie("a=b"), None);
    }
}
