//! Workload identity in policies: `[[agent]] identity`, rules' `when = { claims }`, the
//! shared-issuer check and unknown issuers, through the policy loader and decisions.

use std::path::PathBuf;

use crate::policy::{Action, AgentFacts, Operation, Policy, PolicyErrors};

use super::{IdentityConfig, Verified};

/// `github` is GitHub's shared issuer; `internal` is a company's own GitLab.
fn configure_issuers() {
    let config: IdentityConfig = toml::from_str(
        r#"
[[issuer]]
name = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = "sluice:test"
algorithms = ["RS256"]

[[issuer]]
name = "internal"
issuer = "https://gitlab.acme.internal"
audience = "sluice:test"
algorithms = ["RS256"]
"#,
    )
    .expect("identity config");
    super::set_known_issuers(&config);
}

fn load(text: &str) -> Result<Policy, Vec<String>> {
    configure_issuers();
    Policy::from_sources(&[(PathBuf::from("test.toml"), text.to_owned())])
        .map_err(|PolicyErrors(diagnostics)| diagnostics.iter().map(ToString::to_string).collect())
}

fn identity(issuer: &str, claims: serde_json::Value) -> Verified {
    let serde_json::Value::Object(claims) = claims else {
        panic!("claims must be an object");
    };
    Verified::stated(issuer, &claims)
}

const DEPLOYER: &str = r#"
[[agent]]
name = "deployer"
identity = { issuer = "internal", claims = { project_id = "20", job_workflow_ref = ["acme/api/deploy.yml@*", "acme/api/release.yml@*"] } }

[[resource]]
name = "db"
addresses = ["10.0.0.5"]
ports = [5432]

[[rule]]
name = "reads"
agent = "deployer"
resource = "db"
operations = ["read"]
action = "allow"

[[rule]]
name = "main-writes"
agent = "deployer"
resource = "db"
operations = ["write"]
action = "allow"
when = { claims = { ref = "refs/heads/main" } }
"#;

fn decide(
    policy: &Policy,
    workload: Option<&Verified>,
    operation: Operation,
) -> crate::policy::Decision {
    let facts = AgentFacts {
        agent: "deployer",
        uid: 1000,
        exe: None,
        workload,
    };
    policy.decide(&facts, Some("db"), operation)
}

#[test]
fn an_agent_with_an_identity_is_only_runs_with_that_identity_and_when_needs_its_claims() {
    let policy = load(DEPLOYER).expect("loads");
    let main = identity(
        "internal",
        serde_json::json!({"project_id": 20, "ref": "refs/heads/main", "job_workflow_ref": "acme/api/deploy.yml@refs/heads/main"}),
    );
    let feature = identity(
        "internal",
        serde_json::json!({"project_id": "20", "ref": "refs/heads/feature/x", "job_workflow_ref": "acme/api/release.yml@refs/heads/feature/x"}),
    );
    assert_eq!(
        decide(&policy, Some(&main), Operation::Write).action,
        Action::Allow
    );
    assert_eq!(
        decide(&policy, Some(&main), Operation::Read).action,
        Action::Allow
    );
    assert_eq!(
        decide(&policy, Some(&feature), Operation::Read).action,
        Action::Allow
    );
    let refused = decide(&policy, Some(&feature), Operation::Write);
    assert_eq!(refused.action, Action::Deny);
    assert!(
        refused.reason.contains("rule `main-writes`")
            && refused
                .reason
                .contains("claim `ref` is \"refs/heads/feature/x\", not refs/heads/main"),
        "{}",
        refused.reason
    );

    // No identity, another issuer, another project, a workflow outside the list: not
    // the agent at all, so not even reads.
    let no_identity = decide(&policy, None, Operation::Read);
    assert_eq!(no_identity.action, Action::Deny);
    assert!(
        no_identity.reason.contains("no verified workload identity"),
        "{}",
        no_identity.reason
    );
    let strangers = [
        identity(
            "github",
            serde_json::json!({"project_id": "20", "ref": "refs/heads/main", "job_workflow_ref": "acme/api/deploy.yml@x"}),
        ),
        identity(
            "internal",
            serde_json::json!({"project_id": "21", "ref": "refs/heads/main", "job_workflow_ref": "acme/api/deploy.yml@x"}),
        ),
        identity(
            "internal",
            serde_json::json!({"project_id": "20", "ref": "refs/heads/main", "job_workflow_ref": "acme/api/other.yml@x"}),
        ),
        identity(
            "internal",
            serde_json::json!({"project_id": "20", "ref": "refs/heads/main"}),
        ),
    ];
    for stranger in &strangers {
        let decision = decide(&policy, Some(stranger), Operation::Read);
        assert_eq!(decision.action, Action::Deny, "{stranger:?}");
        assert!(
            decision.reason.contains("is not agent `deployer`"),
            "{}",
            decision.reason
        );
    }
}

#[test]
fn a_matching_when_rule_beats_the_same_rule_without_and_only_equal_whens_conflict() {
    let text = format!(
        "{DEPLOYER}\n[[rule]]\nname = \"writes-reviewed\"\nagent = \"deployer\"\nresource = \"db\"\noperations = [\"write\"]\naction = \"review\"\n"
    );
    let policy = load(&text).expect("different `when`s do not conflict");
    let main = identity(
        "internal",
        serde_json::json!({"project_id": "20", "ref": "refs/heads/main", "job_workflow_ref": "acme/api/deploy.yml@m"}),
    );
    let feature = identity(
        "internal",
        serde_json::json!({"project_id": "20", "ref": "refs/heads/f", "job_workflow_ref": "acme/api/deploy.yml@f"}),
    );
    assert_eq!(
        decide(&policy, Some(&main), Operation::Write).rule,
        "main-writes"
    );
    assert_eq!(
        decide(&policy, Some(&feature), Operation::Write).action,
        Action::Review
    );

    let text = format!(
        "{DEPLOYER}\n[[rule]]\nname = \"main-denied\"\nagent = \"deployer\"\nresource = \"db\"\noperations = [\"write\"]\naction = \"deny\"\nwhen = {{ claims = {{ ref = \"refs/heads/main\" }} }}\n"
    );
    let errors = load(&text).expect_err("equal `when`s with different actions conflict");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("conflicts with rule `main-writes`")),
        "{errors:#?}"
    );
}

#[test]
fn agents_of_a_shared_issuer_must_pin_the_owner() {
    let agent = |claims: &str| {
        format!(
            "[[agent]]\nname = \"deployer\"\nidentity = {{ issuer = \"github\", claims = {{ {claims} }} }}\n"
        )
    };
    for unpinned in [
        r#"repository = "acme/api""#,
        r#"repository_owner_id = "4*""#,
        r#"repository_owner_id = ["4242", "4243"]"#,
    ] {
        let errors = load(&agent(unpinned)).expect_err(unpinned);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with("test.toml:3:12: ")
                && errors[0].contains("repository_owner_id or enterprise_id"),
            "{errors:#?}"
        );
    }
    let errors = load("[[agent]]\nname = \"deployer\"\nidentity = { issuer = \"github\" }\n")
        .expect_err("no claims at all");
    assert!(
        errors[0].contains("issues tokens to every organisation"),
        "{errors:#?}"
    );
    load(&agent(
        r#"repository_owner_id = "4242", repository = "acme/api""#,
    ))
    .expect("pinned");
    // A company's own issuer needs no pin.
    load("[[agent]]\nname = \"deployer\"\nidentity = { issuer = \"internal\" }\n")
        .expect("own issuer");
}

#[test]
fn unknown_issuers_and_malformed_claims_are_load_errors() {
    let errors = load(
        "[[agent]]\nname = \"a\"\nidentity = { issuer = \"jenkins\", claims = { x = \"1\" } }\n",
    )
    .expect_err("unknown issuer");
    assert!(
        errors[0].contains("unknown identity issuer `jenkins`"),
        "{errors:#?}"
    );
    for (text, needle) in [
        (
            "[[agent]]\nname = \"a\"\nidentity = { issuer = \"internal\", claims = {} }\n",
            "at least one claim",
        ),
        (
            "[[agent]]\nname = \"a\"\nidentity = { issuer = \"internal\", claims = { ref = [] } }\n",
            "empty",
        ),
        (
            "[[agent]]\nname = \"a\"\nidentity = { issuer = \"internal\", claim = { ref = \"x\" } }\n",
            "unknown field",
        ),
        (
            "[[agent]]\nname = \"a\"\n[[rule]]\nagent = \"a\"\nresource = \"*\"\naction = \"allow\"\nwhen = { claims = { ref = { x = 1 } } }\n",
            "a pattern is a string",
        ),
        (
            "[[agent]]\nname = \"a\"\n[[rule]]\nagent = \"a\"\nresource = \"*\"\naction = \"allow\"\nwhen = { branch = \"main\" }\n",
            "unknown field",
        ),
    ] {
        let errors = load(text).expect_err(needle);
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle}: {errors:#?}"
        );
    }
}
