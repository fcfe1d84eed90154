//! What every page handler is given: the connection to the controller, who it acts as,
//! and the gate's secrets (for the forms' CSRF field).

use std::sync::Arc;

use super::gate::Gate;
use crate::connect::Api;

/// Who the console acts as, read once from the controller at start.
pub struct Me {
    pub operator: String,
    pub role: String,
    pub controller: String,
}

impl Me {
    /// Drills and plan runs need the operator or admin role; a viewer's pages have no buttons.
    pub fn can_act(&self) -> bool {
        self.role == "operator" || self.role == "admin"
    }
}

#[derive(Clone)]
pub struct Console {
    pub api: Api,
    pub me: Arc<Me>,
    pub gate: Arc<Gate>,
}
