//! The user directory (the seed's User Service): who the users are and who may call whom.
//! Embedded: `[[calls.users]]` in the node's TOML. A contact holds both ways only when both
//! users list each other.

use std::collections::BTreeMap;

use pipelines::config::CallUser;

use crate::protocol::Person;

/// Who the users are and who may reach whom.
pub trait Directory: Send + Sync {
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

    fn lists(&self, user: &str, other: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.contacts.iter().any(|c| c == other))
    }
}

impl Directory for Embedded {
    fn user(&self, id: &str) -> Option<Person> {
        self.users.get(id).map(|u| Person {
            id: u.id.clone(),
            name: if u.name.is_empty() {
                u.id.clone()
            } else {
                u.name.clone()
            },
        })
    }

    fn may_call(&self, from: &str, to: &str) -> bool {
        from != to && self.lists(from, to) && self.lists(to, from)
    }

    fn contacts(&self, user: &str) -> Vec<Person> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        u.contacts
            .iter()
            .filter(|c| self.may_call(user, c))
            .filter_map(|c| self.user(c))
            .collect()
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
