//! What a budget is, as every surface checks it before `db::budgets` writes it: a scope (a
//! tenant, a workflow or an order), a limit in one currency over a period, and what happens
//! to the scope's items once it is spent. The spend itself is kept by the database (the cost
//! entries' trigger, migration 0028); the dispatcher reads it at every claim.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Whose spend a budget limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Scope {
    Tenant(Uuid),
    Workflow(String),
    Order(Uuid),
}

impl Scope {
    /// `tenant:UUID`, `workflow:NAME` or `order:UUID`, as the CLI and the page take it.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let (kind, id) = text
            .split_once(':')
            .ok_or_else(|| format!("scope {text:?} must be tenant:UUID, workflow:NAME or order:UUID"))?;
        let uuid = |id: &str| id.trim().parse::<Uuid>().map_err(|_| format!("{id:?} in scope {text:?} is not a UUID"));
        match kind.trim() {
            "tenant" => Ok(Scope::Tenant(uuid(id)?)),
            "order" => Ok(Scope::Order(uuid(id)?)),
            "workflow" if !id.trim().is_empty() && id.len() <= 255 => Ok(Scope::Workflow(id.trim().to_owned())),
            "workflow" => Err(format!("scope {text:?} needs a workflow name (at most 255 bytes)")),
            other => Err(format!("scope kind {other:?} is not one of tenant, workflow, order")),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Scope::Tenant(id) => format!("tenant:{id}"),
            Scope::Workflow(name) => format!("workflow:{name}"),
            Scope::Order(id) => format!("order:{id}"),
        }
    }
}

/// Over how long a budget's spend is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Everything the scope spent since the budget was made (and, for an order, before).
    #[default]
    Total,
    /// One calendar day in the budget's time zone.
    Day,
    /// One calendar month in the budget's time zone.
    Month,
}

/// What the scope's items do while the budget is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Wait in QUEUED until the next period, or until an operator raises or resets it.
    #[default]
    Wait,
    /// Held in AWAITING_APPROVAL before they run: approved, the item runs anyway; rejected,
    /// it waits.
    Hold,
}

macro_rules! words {
    ($ty:ty { $($variant:ident = $word:literal),+ }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text.trim() {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!("{other:?} is not one of {}", [$($word),+].join(", "))),
                }
            }
        }
    };
}
words!(Period { Total = "total", Day = "day", Month = "month" });
words!(OnExhausted { Wait = "wait", Hold = "hold" });

/// A budget to create, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBudget {
    pub name: String,
    pub scope: Scope,
    /// A positive decimal, as text (never a float).
    pub amount: String,
    pub currency: String,
    pub period: Period,
    /// An IANA time zone name; PostgreSQL checks it.
    pub time_zone: String,
    pub on_exhausted: OnExhausted,
    /// Connector names told at 80% and 100%.
    pub connectors: Vec<String>,
}

/// A budget name: letters, digits and `_ . : -`, starting with a letter or digit, at most 100.
pub fn name(text: &str) -> Result<String, String> {
    let t = text.trim();
    let ok = !t.is_empty()
        && t.len() <= 100
        && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    ok.then(|| t.to_owned()).ok_or_else(|| {
        format!("budget name {text:?}: letters, digits and _ . : - (at most 100), starting with a letter or digit")
    })
}

/// A positive amount, as exact decimal text.
pub fn amount(text: &str) -> Result<String, String> {
    crate::policy::costs::decimal(Some(&Value::String(text.to_owned())))
        .filter(|d| d.chars().any(|c| c.is_ascii_digit() && c != '0'))
        .ok_or_else(|| format!("amount {text:?} must be a positive decimal such as 100 or 12.50"))
}

/// A three-letter currency code, upper-cased.
pub fn currency(text: &str) -> Result<String, String> {
    crate::policy::costs::currency(Some(&Value::String(text.to_owned())))
        .ok_or_else(|| format!("currency {text:?} must be three letters (ISO 4217), such as USD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_amounts_and_names_are_checked() {
        let id = Uuid::nil();
        assert_eq!(Scope::parse(&format!("tenant:{id}")), Ok(Scope::Tenant(id)));
        assert_eq!(Scope::parse("workflow:summarise"), Ok(Scope::Workflow("summarise".into())));
        for bad in ["tenant:nope", "team:x", "workflow:", "summarise"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(amount("12.50"), Ok("12.50".into()));
        for bad in ["0", "0.00", "-5", "1e3", "ten", ""] {
            assert!(amount(bad).is_err(), "{bad}");
        }
        assert_eq!(currency("eur"), Ok("EUR".into()));
        assert!(currency("euro").is_err());
        assert!(name("team-a.monthly").is_ok());
        assert!(name("-x").is_err() && name("a b").is_err());
        assert_eq!("month".parse::<Period>(), Ok(Period::Month));
        assert!("week".parse::<Period>().is_err());
        assert_eq!("hold".parse::<OnExhausted>(), Ok(OnExhausted::Hold));
    }
}
