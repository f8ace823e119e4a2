//! The user directory (the seed's User Service): who the users are and who may call whom.
//! Embedded: `[[calls.users]]` in the node's TOML; a service: `[calls] users_url`
//! ([`Remote`]). A contact holds both ways only when both users list each other.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use pipelines::config::CallUser;
use tracing::{debug, warn};

use crate::protocol::Person;

pub type Fetching<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Who the users are and who may reach whom. The questions are answered at once (signaling
/// asks them holding its state); a directory that must fetch its answers does so in
/// [`Directory::fetch`], awaited before the questions about those users are asked.
pub trait Directory: Send + Sync {
    /// Makes sure what is known of `ids` is fresh, and with `contacts` of the users they
    /// list too (to tell them who is online).
    fn fetch<'a>(&'a self, ids: &'a [String], contacts: bool) -> Fetching<'a> {
        let _ = (ids, contacts);
        Box::pin(std::future::ready(()))
    }
    fn user(&self, id: &str) -> Option<Person>;
    /// Whether `from` may call `to` (and see them online).
    fn may_call(&self, from: &str, to: &str) -> bool;
    /// The users `user` may call.
    fn contacts(&self, user: &str) -> Vec<Person>;
}

/// The directory in `[[calls.users]]`.
#[derive(Debug, Default)]
pub struct Embedded {
    users: BTreeMap<String, CallUser>,
}

impl Embedded {
    pub fn new(users: &[CallUser]) -> Embedded {
        Embedded {
            users: users.iter().map(|u| (u.id.clone(), u.clone())).collect(),
        }
    }

    fn get(&self, id: &str) -> Option<CallUser> {
        self.users.get(id).cloned()
    }
}

impl Directory for Embedded {
    fn user(&self, id: &str) -> Option<Person> {
        self.users.get(id).map(person)
    }

    fn may_call(&self, from: &str, to: &str) -> bool {
        two_way(from, to, |id| self.get(id))
    }

    fn contacts(&self, user: &str) -> Vec<Person> {
        contacts_of(user, |id| self.get(id))
    }
}

/// Whether `from` and `to` list each other, as `get` knows users.
fn two_way(from: &str, to: &str, get: impl Fn(&str) -> Option<CallUser>) -> bool {
    let lists =
        |user: &str, other: &str| get(user).is_some_and(|u| u.contacts.iter().any(|c| c == other));
    from != to && lists(from, to) && lists(to, from)
}

/// The users `user` lists who list them back.
fn contacts_of(user: &str, get: impl Fn(&str) -> Option<CallUser>) -> Vec<Person> {
    let Some(u) = get(user) else {
        return Vec::new();
    };
    u.contacts
        .iter()
        .filter(|c| two_way(user, c, &get))
        .filter_map(|c| get(c).map(|c| person(&c)))
        .collect()
}

/// A user as anyone lists them: their name, or their id when they have none.
fn person(u: &CallUser) -> Person {
    Person {
        id: u.id.clone(),
        name: if u.name.is_empty() {
            u.id.clone()
        } else {
            u.name.clone()
        },
    }
}

/// Users a directory service's answers are kept for at most; past it, expired ones go, and
/// if none has, the new one is not kept (and its user is not known: refused).
const CACHE_CAPACITY: usize = 16_384;
/// The largest answer read from the service.
const MAX_ANSWER: usize = 64 * 1024;
/// Contacts of one user looked up when they sign in.
pub const MAX_CONTACTS: usize = 100;
/// How long the service has to answer.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// The directory as a service of the operator's: `GET <users_url>/<id>`.
pub struct Remote {
    base: String,
    client: pipelines::http_client::HttpClient,
    cache_for: Duration,
    known: Mutex<HashMap<String, (Instant, CallUser)>>,
}

impl Remote {
    pub fn new(users_url: &str, cache_for: Duration) -> Remote {
        Remote {
            base: users_url.trim_end_matches('/').to_owned(),
            client: pipelines::http_client::client(ASK_WITHIN, "user directories"),
            cache_for,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the service about each of `ids` not asked within `cache_for`.
    async fn refresh(&self, ids: &[String]) {
        for id in ids {
            let now = Instant::now();
            let fresh = self
                .known()
                .get(id)
                .is_some_and(|(at, _)| now.duration_since(*at) < self.cache_for);
            if fresh || !pipelines::config::is_path_safe(id) {
                continue;
            }
            let answer = self.ask(id).await;
            let mut known = self.known();
            match answer {
                Ok(Some(user)) => {
                    if known.len() >= CACHE_CAPACITY {
                        let cache_for = self.cache_for;
                        known.retain(|_, (at, _)| now.duration_since(*at) < cache_for);
                    }
                    if known.len() < CACHE_CAPACITY {
                        known.insert(id.clone(), (now, user));
                    }
                }
                Ok(None) => {
                    debug!(user = %id, "not in the user directory");
                    known.remove(id);
                }
                Err(why) => {
                    // Fails closed: a user the directory cannot vouch for now is nobody.
                    warn!(user = %id, "the user directory cannot say: {why}");
                    known.remove(id);
                }
            }
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, CallUser)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Option<CallUser> {
        self.known().get(id).map(|(_, u)| u.clone())
    }

    /// What the service says of `id`: the user, `Ok(None)` when it has no such user, `Err`
    /// when it cannot say.
    async fn ask(&self, id: &str) -> Result<Option<CallUser>, String> {
        let url = format!("{}/{id}", self.base);
        let request = hyper::Request::get(url.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "tiercast")
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(ASK_WITHIN, self.client.request(request))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            status => return Err(format!("answered {status}")),
        }
        let body = tokio::time::timeout(
            ASK_WITHIN,
            Limited::new(response.into_body(), MAX_ANSWER).collect(),
        )
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        let user: CallUser = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if user.id != id {
            return Err(format!("asked for {id:?}, answered {:?}", user.id));
        }
        Ok(Some(user))
    }
}

impl Directory for Remote {
    fn fetch<'a>(&'a self, ids: &'a [String], contacts: bool) -> Fetching<'a> {
        Box::pin(async move {
            self.refresh(ids).await;
            if contacts {
                let listed: Vec<String> = ids
                    .iter()
                    .filter_map(|id| self.get(id))
                    .flat_map(|u| u.contacts.into_iter().take(MAX_CONTACTS))
                    .collect();
                self.refresh(&listed).await;
            }
        })
    }

    fn user(&self, id: &str) -> Option<Person> {
        self.get(id).map(|u| person(&u))
    }

    fn may_call(&self, from: &str, to: &str) -> bool {
        two_way(from, to, |id| self.get(id))
    }

    fn contacts(&self, user: &str) -> Vec<Person> {
        contacts_of(user, |id| self.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, contacts: &[&str]) -> CallUser {
        CallUser {
            id: id.into(),
            name: String::new(),
            contacts: contacts.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn a_contact_holds_when_both_say_so() {
        let d = Embedded::new(&[
            user("alice", &["bob", "carol", "dave"]),
            user("bob", &["alice"]),
            user("carol", &["alice"]),
            user("dave", &[]),
        ]);
        assert!(d.may_call("alice", "bob") && d.may_call("bob", "alice"));
        assert!(!d.may_call("alice", "dave"), "dave does not list alice");
        assert!(!d.may_call("bob", "carol"));
        assert!(!d.may_call("alice", "alice"));
        assert!(!d.may_call("alice", "nobody"));
        let names: Vec<String> = d.contacts("alice").into_iter().map(|p| p.id).collect();
        assert_eq!(names, ["bob", "carol"]);
        assert_eq!(
            d.user("bob").unwrap().name,
            "bob",
            "the id when there is no name"
        );
    }
}
