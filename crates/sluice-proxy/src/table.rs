//! A route as data: what one entry point routes by (backends, their
//! health, variant and draining, the split, and the goals it counts), so
//! that another entry point (one on an agent's host) routes by the same.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::goals::{Goal, GoalTracker, RequestRule};
use crate::route::{Backend, Route};
use crate::split::{Split, Sticky, Variant};

/// A route's backends and split, as sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    pub backends: Vec<TableBackend>,
    pub split: Option<TableSplit>,
    /// The experiment's goals, counted for the tracker `id` of the server.
    #[serde(default)]
    pub goals: Option<TableGoals>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableGoals {
    pub id: u64,
    pub goals: Vec<TableGoal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableGoal {
    pub name: String,
    /// `POST /checkout`, reached by such a request when given.
    pub method: Option<String>,
    pub path: Option<String>,
    pub status_class: Option<u16>,
    pub value: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub release: String,
    pub variant: Variant,
    pub healthy: bool,
    pub draining: bool,
}

/// The split: B's share, and the header its user key comes from (none: the cookie).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSplit {
    pub percent: f64,
    pub header: Option<String>,
    pub allow_force: bool,
}

impl Route {
    /// The route as it is now.
    pub fn table(&self) -> RouteTable {
        let mut backends: Vec<TableBackend> = self
            .backends()
            .iter()
            .map(|b| TableBackend {
                id: b.id.clone(),
                addr: b.addr,
                release: b.release.clone(),
                variant: b.variant(),
                healthy: b.is_healthy(),
                draining: b.is_draining(),
            })
            .collect();
        backends.sort_by(|a, b| a.id.cmp(&b.id));
        let split = self.split().map(|split| TableSplit {
            percent: split.percent(),
            header: match &split.sticky {
                Sticky::Cookie => None,
                Sticky::Header(name) => Some(name.to_string()),
            },
            allow_force: split.allow_force,
        });
        let goals = self.goals().map(|tracker| TableGoals {
            id: tracker.id(),
            goals: tracker.goals().iter().map(table_goal).collect(),
        });
        RouteTable {
            backends,
            split,
            goals,
        }
    }

    /// Routes by `table` from now on. A backend no longer in it, or
    /// draining there, is drained here: it gets no new request and goes
    /// at the next [`Route::sweep`] after its last one is answered.
    pub fn apply(&self, table: &RouteTable) -> Result<(), String> {
        let split = table.split.as_ref().map(split_of).transpose()?;
        let goals = match &table.goals {
            None => None,
            Some(wanted) if self.goals().is_some_and(|g| g.id() == wanted.id) => self.goals(),
            Some(wanted) => Some(Arc::new(tracker_of(wanted)?)),
        };
        for wanted in &table.backends {
            let backend = match self.get(&wanted.id) {
                Some(backend) if backend.addr == wanted.addr => backend,
                _ => {
                    let backend = Backend::new(&wanted.id, wanted.addr, &wanted.release);
                    self.add(backend.clone());
                    backend
                }
            };
            backend.set_variant(wanted.variant);
            backend.set_healthy(wanted.healthy);
            if wanted.draining {
                backend.set_draining();
            }
        }
        for backend in self.backends() {
            if !table.backends.iter().any(|b| b.id == backend.id) {
                backend.set_draining();
            }
        }
        self.set_split(split);
        self.set_goals(goals);
        Ok(())
    }

    /// Removes the draining backends with nothing in flight.
    pub fn sweep(&self) {
        for backend in self.backends() {
            if backend.is_draining() && backend.in_flight() == 0 {
                self.remove(&backend.id);
            }
        }
    }

    /// The backends this route may still send a request to or is waiting
    /// on: those not draining, and those draining with requests in flight.
    pub fn holding(&self) -> Vec<String> {
        self.backends()
            .iter()
            .filter(|b| !b.is_draining() || b.in_flight() > 0)
            .map(|b| b.id.clone())
            .collect()
    }
}

fn table_goal(goal: &Goal) -> TableGoal {
    TableGoal {
        name: goal.name.clone(),
        method: goal.on.as_ref().map(|r| r.method.to_string()),
        path: goal.on.as_ref().map(|r| r.path.clone()),
        status_class: goal.on.as_ref().and_then(|r| r.status_class),
        value: goal.value,
    }
}

/// A tracker recording what it counts for the server's tracker.
fn tracker_of(table: &TableGoals) -> Result<GoalTracker, String> {
    let goals = table
        .goals
        .iter()
        .map(|goal| {
            let on = match (&goal.method, &goal.path) {
                (Some(method), Some(path)) => Some(RequestRule {
                    method: http::Method::from_bytes(method.as_bytes())
                        .map_err(|_| format!("`{}` is not a method", method.escape_debug()))?,
                    path: path.clone(),
                    status_class: goal.status_class,
                }),
                _ => None,
            };
            Ok(Goal {
                name: goal.name.clone(),
                on,
                value: goal.value,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    GoalTracker::recording(goals, table.id)
}

fn split_of(table: &TableSplit) -> Result<Split, String> {
    let sticky = match &table.header {
        None => Sticky::Cookie,
        Some(name) => Sticky::Header(
            HeaderName::try_from(name.as_str())
                .map_err(|_| format!("`{}` is not a header name", name.escape_debug()))?,
        ),
    };
    Split::new(table.percent, sticky, table.allow_force)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16, variant: Variant, healthy: bool) -> TableBackend {
        TableBackend {
            id: id.into(),
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            release: "v1".into(),
            variant,
            healthy,
            draining: false,
        }
    }

    #[test]
    fn a_route_applied_routes_as_the_one_it_was_read_from() {
        let server = Route::default();
        let a = Backend::new("a", SocketAddr::from(([10, 0, 0, 1], 1)), "v1");
        a.set_healthy(true);
        let b = Backend::new("b", SocketAddr::from(([10, 0, 0, 1], 2)), "v2");
        b.set_variant(Variant::B);
        server.add(a);
        server.add(b);
        let header = Sticky::Header(HeaderName::from_static("x-user"));
        server.set_split(Some(Split::new(12.5, header, true).unwrap()));
        let checkout = Goal {
            name: "checkout".into(),
            on: Some(RequestRule {
                method: http::Method::POST,
                path: "/checkout".into(),
                status_class: Some(2),
            }),
            value: false,
        };
        let goals = vec![
            checkout,
            Goal {
                name: "spent".into(),
                on: None,
                value: true,
            },
        ];
        server.set_goals(Some(Arc::new(GoalTracker::new(goals).unwrap())));
        let host = Route::default();
        host.apply(&server.table()).unwrap();
        assert_eq!(host.table(), server.table());
        let counting = host.goals().unwrap();
        host.apply(&server.table()).unwrap();
        assert!(
            Arc::ptr_eq(&counting, &host.goals().unwrap()),
            "the same experiment's tracker is kept"
        );
        counting.expose(1, Variant::B, 0.1);
        assert_eq!(
            counting.take_events().len(),
            1,
            "a host's tracker records what it counts"
        );
        assert_eq!(host.get("b").unwrap().variant(), Variant::B);
        assert!(!host.get("b").unwrap().is_healthy());
        assert_eq!(host.split().unwrap().percent(), 12.5);
    }

    #[test]
    fn a_backend_left_out_drains_and_goes_once_idle() {
        let host = Route::default();
        let mut table = RouteTable {
            backends: vec![
                backend("a", 1, Variant::A, true),
                backend("b", 2, Variant::A, true),
            ],
            split: None,
            goals: None,
        };
        host.apply(&table).unwrap();
        assert_eq!(host.holding(), ["a", "b"]);
        let busy = host.pick(None, Some("a")).unwrap();
        assert_eq!(busy.0.id, "b");
        table.backends.pop();
        host.apply(&table).unwrap();
        host.sweep();
        assert_eq!(host.holding(), ["a", "b"], "b still answers a request");
        assert!((0..10).all(|_| host.pick(None, None).unwrap().0.id == "a"));
        drop(busy);
        assert_eq!(host.holding(), ["a"]);
        host.sweep();
        assert_eq!(host.backends().len(), 1);
        table.backends[0].draining = true;
        host.apply(&table).unwrap();
        assert!(host.holding().is_empty());
    }

    #[test]
    fn a_change_is_seen_by_the_route_s_watchers() {
        let route = Route::default();
        let watch = route.watch();
        let a = Backend::new("a", SocketAddr::from(([10, 0, 0, 1], 1)), "v1");
        route.add(a.clone());
        let after_add = *watch.borrow();
        a.set_healthy(true);
        assert!(*watch.borrow() > after_add, "health is a change");
        let before = *watch.borrow();
        a.set_healthy(true);
        route.set_split(None);
        assert_eq!(*watch.borrow(), before, "setting what is already so is not");
    }

    #[test]
    fn a_bad_header_name_is_refused() {
        let table = RouteTable {
            backends: vec![],
            split: Some(TableSplit {
                percent: 5.0,
                header: Some("not a header\n".into()),
                allow_force: false,
            }),
            goals: None,
        };
        let error = Route::default().apply(&table).unwrap_err();
        assert!(error.contains("is not a header name"), "{error}");
    }
}
