//! Role-based access control end to end: the role × resource × operation matrix, tenant
//! isolation (an object of another tenant answers 404 exactly like a missing one, and never
//! shows up in a list), what a tenant admin may grant, and cloud-account credentials that no
//! read ever returns.
//!
//! Every test builds its fixtures once (each appliance start and each password hash costs
//! time) and loops over tables; every assertion names the role, the method and the path.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    cluster_body, profile_body, tenant_fixture, user_with_role, uuid_like, Api, Reply,
    TenantFixture, TestApp, PASSWORD,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A unique DNS-label name.
fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

/// A well-formed id that names nothing.
fn random_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The `id` of an object answer.
fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("object has an id").to_string()
}

/// Ids of the items of a list answer (a page `{items, next_after}` or a bare array).
fn listed_ids(body: &Value) -> Vec<String> {
    body.get("items")
        .unwrap_or(body)
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A valid cloud account body.
fn account_body(project: &str, name: &str, username: &str, password: &str) -> Value {
    json!({
        "project_id": project,
        "name": name,
        "kind": "vsphere",
        "endpoint": "https://vc.example.local/sdk",
        "credentials": {"username": username, "password": password}
    })
}

/// A valid body for `PUT /v1/clusters/{id}`.
fn cluster_update_body() -> Value {
    let pools = cluster_body("p", "n", "pr", "ca")["node_pools"].clone();
    json!({"profile_revision": 1, "node_pools": pools, "drift_policy": "reconcile"})
}

/// A valid body for `POST /v1/profiles/{id}/revisions`.
fn revision_body() -> Value {
    json!({"layers": profile_body("p", "n")["layers"].clone()})
}

/// A problem document without its request id, for comparing two answers.
fn problem_shape(r: &Reply) -> Value {
    let mut body = r.body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    body
}

/// One actor of a test: a role and a token client of a user holding it.
struct Actor {
    role: &'static str,
    api: Api,
    user_id: String,
    username: String,
}

impl Actor {
    async fn new(role: &'static str, api: Api) -> Actor {
        let (status, me) = api.get("/v1/me").await;
        assert_eq!(status, StatusCode::OK, "{role} GET /v1/me: {me}");
        Actor {
            role,
            user_id: me["user"]["id"].as_str().expect("user id").to_string(),
            username: me["user"]["username"]
                .as_str()
                .expect("username")
                .to_string(),
            api,
        }
    }

    /// Send and describe the request for assertion messages.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (String, Reply) {
        let label = format!("{} {method} {path}", self.role);
        let r = self.api.send(method, path, body, &[]).await;
        (label, r)
    }
}

/// The usual cast inside tenant `t` (project `p`): tenant admin, project editor, project viewer,
/// and a user of the tenant with no binding at all.
async fn tenant_cast(app: &TestApp, admin: &Api, t: &TenantFixture) -> Vec<Actor> {
    let tenant = Some(t.tenant.as_str());
    let tadmin = user_with_role(
        app,
        admin,
        &uniq("tadmin"),
        tenant,
        "tenant-admin",
        json!({"tenant_id": t.tenant}),
    )
    .await;
    let editor = user_with_role(
        app,
        admin,
        &uniq("editor"),
        tenant,
        "project-editor",
        json!({"project_id": t.project}),
    )
    .await;
    let viewer = user_with_role(
        app,
        admin,
        &uniq("viewer"),
        tenant,
        "project-viewer",
        json!({"project_id": t.project}),
    )
    .await;
    let nobody_name = uniq("nobody");
    admin
        .create(
            "/v1/users",
            json!({"username": nobody_name, "password": PASSWORD, "tenant_id": t.tenant}),
        )
        .await;
    let nobody = app.login_token(&nobody_name, PASSWORD).await;
    vec![
        Actor::new("tenant-admin", tadmin).await,
        Actor::new("project-editor", editor).await,
        Actor::new("project-viewer", viewer).await,
        Actor::new("no-binding", nobody).await,
    ]
}

/// Put one pack into the catalogue. No API writes packs (bundle import fills the table), so
/// the test writes the row the way an import would, next to the running appliance.
fn insert_pack(app: &TestApp) -> String {
    let id = random_id();
    let db = rusqlite::Connection::open(app.dir.join("state.db")).expect("open state.db");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    db.execute(
        "INSERT INTO packs (id, name, version, layer_type, digest, description, created_at)
         VALUES (?1, 'cilium', '1.15.3', 'network', ?2, 'CNI', 0)",
        rusqlite::params![id, format!("sha256:{}", "ab".repeat(32))],
    )
    .expect("insert pack");
    id
}

// ---------------------------------------------------------------------------------------------
// 1. The matrix
// ---------------------------------------------------------------------------------------------

/// What a row of the matrix is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Tenants,
    Projects,
    /// Another user of tenant A (the caller's own account is `OwnAccount`).
    Users,
    OwnAccount,
    RoleBindings,
    OwnTokens,
    /// Tokens of another user of tenant A.
    OthersTokens,
    CloudAccounts,
    Profiles,
    /// `/v1/profiles/{id}/revisions[/{n}]`.
    Revisions,
    Clusters,
    Events,
    Packs,
    Audit,
    AuditExport,
    AuditVerify,
    Metrics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    List,
    Get,
    Create,
    /// PUT
    Update,
    Delete,
}

/// An expected answer.
#[derive(Clone, Copy, Debug)]
enum E {
    /// 200, and the row's object is among the items.
    Listed,
    /// 200, and the row's object is not among the items.
    Unlisted,
    /// This status (403 and 404 also check the problem type).
    Is(u16),
    /// 400 naming this field (the referenced parent does not exist for the caller).
    Bad(&'static str),
    /// 404 `/problems/no-such-route`: no route has this path.
    NoRoute,
}

use E::{Bad, Is, Listed, NoRoute, Unlisted};

const OK: E = Is(200);
const CREATED: E = Is(201);
const DELETED: E = Is(204);
/// Deletion accepted: the orchestrator finishes it (clusters).
const DELETING: E = Is(202);
const FORBIDDEN: E = Is(403);
const MISSING: E = Is(404);
const NO_METHOD: E = Is(405);
const CONFLICT: E = Is(409);

/// Column order of the matrix.
const ROLES: [&str; 5] = [
    "system-admin",
    "tenant-admin",
    "project-editor",
    "project-viewer",
    "no-binding",
];

/// Every role × resource × operation. The object of a row is tenant A's (its project P, its
/// cloud account, profile, cluster, event; the editor's binding; another user of A and that
/// user's token), except that a delete expected to succeed gets a fresh object of its own.
#[rustfmt::skip]
const MATRIX: &[(Res, Op, [E; 5])] = &[
    //                                system-admin tenant-admin project-editor project-viewer no-binding
    // Tenant A (a delete that succeeds removes a fresh, empty tenant instead).
    (Res::Tenants,       Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::Tenants,       Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Tenants,       Op::Create, [CREATED,    FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),
    (Res::Tenants,       Op::Update, [OK,         OK,          FORBIDDEN,     FORBIDDEN,     MISSING]),
    (Res::Tenants,       Op::Delete, [DELETED,    FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     MISSING]),

    // Project P of tenant A, where the editor and the viewer hold their roles.
    (Res::Projects,      Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::Projects,      Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Projects,      Op::Create, [CREATED,    CREATED,     FORBIDDEN,     FORBIDDEN,     Bad("tenant_id")]),
    (Res::Projects,      Op::Update, [OK,         OK,          FORBIDDEN,     FORBIDDEN,     MISSING]),
    (Res::Projects,      Op::Delete, [DELETED,    DELETED,     FORBIDDEN,     FORBIDDEN,     MISSING]),

    // Another user of tenant A, without bindings; creating one creates it in A.
    (Res::Users,         Op::List,   [Listed,     Listed,      Unlisted,      Unlisted,      Unlisted]),
    (Res::Users,         Op::Get,    [OK,         OK,          MISSING,       MISSING,       MISSING]),
    (Res::Users,         Op::Create, [CREATED,    CREATED,     FORBIDDEN,     FORBIDDEN,     Bad("tenant_id")]),
    (Res::Users,         Op::Update, [OK,         OK,          MISSING,       MISSING,       MISSING]),
    (Res::Users,         Op::Delete, [DELETED,    DELETED,     MISSING,       MISSING,       MISSING]),

    // The caller's own account (changing your own password is /v1/me/password).
    (Res::OwnAccount,    Op::List,   [Listed,     Listed,      Listed,        Listed,        Listed]),
    (Res::OwnAccount,    Op::Get,    [OK,         OK,          OK,            OK,            OK]),
    (Res::OwnAccount,    Op::Update, [OK,         OK,          FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),
    (Res::OwnAccount,    Op::Delete, [CONFLICT,   CONFLICT,    FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),

    // The editor's binding in P; creating one = granting yourself project-viewer in P.
    (Res::RoleBindings,  Op::List,   [Listed,     Listed,      Listed,        Unlisted,      Unlisted]),
    (Res::RoleBindings,  Op::Get,    [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::RoleBindings,  Op::Create, [CREATED,    CREATED,     FORBIDDEN,     FORBIDDEN,     Bad("project_id")]),
    (Res::RoleBindings,  Op::Update, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::RoleBindings,  Op::Delete, [DELETED,    DELETED,     FORBIDDEN,     MISSING,       MISSING]),

    // The caller's own API tokens.
    (Res::OwnTokens,     Op::List,   [Listed,     Listed,      Listed,        Listed,        Listed]),
    (Res::OwnTokens,     Op::Get,    [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::OwnTokens,     Op::Create, [CREATED,    CREATED,     CREATED,       CREATED,       CREATED]),
    (Res::OwnTokens,     Op::Update, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::OwnTokens,     Op::Delete, [DELETED,    DELETED,     DELETED,       DELETED,       DELETED]),

    // A token of another user of tenant A.
    (Res::OthersTokens,  Op::List,   [Unlisted,   Unlisted,    Unlisted,      Unlisted,      Unlisted]),
    (Res::OthersTokens,  Op::Delete, [DELETED,    MISSING,     MISSING,       MISSING,       MISSING]),

    // Project objects of P.
    (Res::CloudAccounts, Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::CloudAccounts, Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::CloudAccounts, Op::Create, [CREATED,    CREATED,     CREATED,       FORBIDDEN,     Bad("project_id")]),
    (Res::CloudAccounts, Op::Update, [OK,         OK,          OK,            FORBIDDEN,     MISSING]),
    (Res::CloudAccounts, Op::Delete, [DELETED,    DELETED,     DELETED,       FORBIDDEN,     MISSING]),

    (Res::Profiles,      Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::Profiles,      Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Profiles,      Op::Create, [CREATED,    CREATED,     CREATED,       FORBIDDEN,     Bad("project_id")]),
    (Res::Profiles,      Op::Update, [OK,         OK,          OK,            FORBIDDEN,     MISSING]),
    (Res::Profiles,      Op::Delete, [DELETED,    DELETED,     DELETED,       FORBIDDEN,     MISSING]),

    (Res::Revisions,     Op::List,   [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Revisions,     Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Revisions,     Op::Create, [CREATED,    CREATED,     CREATED,       FORBIDDEN,     MISSING]),
    (Res::Revisions,     Op::Update, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Revisions,     Op::Delete, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),

    (Res::Clusters,      Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::Clusters,      Op::Get,    [OK,         OK,          OK,            OK,            MISSING]),
    (Res::Clusters,      Op::Create, [CREATED,    CREATED,     CREATED,       FORBIDDEN,     Bad("project_id")]),
    (Res::Clusters,      Op::Update, [OK,         OK,          OK,            FORBIDDEN,     MISSING]),
    (Res::Clusters,      Op::Delete, [DELETING,   DELETING,    DELETING,      FORBIDDEN,     MISSING]),

    // Read-only: events of P's objects, the pack catalogue, the audit log, metrics.
    (Res::Events,        Op::List,   [Listed,     Listed,      Listed,        Listed,        Unlisted]),
    (Res::Events,        Op::Get,    [NoRoute,    NoRoute,     NoRoute,       NoRoute,       NoRoute]),
    (Res::Events,        Op::Create, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Events,        Op::Update, [NoRoute,    NoRoute,     NoRoute,       NoRoute,       NoRoute]),
    (Res::Events,        Op::Delete, [NoRoute,    NoRoute,     NoRoute,       NoRoute,       NoRoute]),

    (Res::Packs,         Op::List,   [Listed,     Listed,      Listed,        Listed,        Listed]),
    (Res::Packs,         Op::Get,    [OK,         OK,          OK,            OK,            OK]),
    (Res::Packs,         Op::Create, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Packs,         Op::Update, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Packs,         Op::Delete, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),

    (Res::Audit,         Op::List,   [OK,         FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),
    (Res::Audit,         Op::Create, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Audit,         Op::Update, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::Audit,         Op::Delete, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
    (Res::AuditExport,   Op::List,   [OK,         FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),
    (Res::AuditVerify,   Op::Get,    [OK,         FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),

    (Res::Metrics,       Op::Get,    [OK,         FORBIDDEN,   FORBIDDEN,     FORBIDDEN,     FORBIDDEN]),
    (Res::Metrics,       Op::Create, [NO_METHOD,  NO_METHOD,   NO_METHOD,     NO_METHOD,     NO_METHOD]),
];

/// One request of the matrix, and the object a list answer should (not) contain.
struct Req {
    method: Method,
    path: String,
    body: Option<Value>,
    listed: Option<String>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Req {
        Req {
            method,
            path: path.into(),
            body,
            listed: None,
        }
    }
    fn list(path: impl Into<String>, object: &str) -> Req {
        Req {
            listed: Some(object.to_string()),
            ..Req::new(Method::GET, path, None)
        }
    }
}

/// Tenant A with one object of every kind, and an actor for every column of the matrix.
struct World {
    admin: Api,
    a: TenantFixture,
    actors: Vec<Actor>,
    /// The first token of each actor (the one its client uses).
    own_tokens: Vec<String>,
    /// Another user of tenant A, without bindings, and a session and a token of it.
    member: String,
    member_session: Api,
    member_token: String,
    /// The project editor's binding.
    editor_binding: String,
    event: String,
    pack: String,
}

impl World {
    async fn build(app: &TestApp) -> World {
        let admin = app.admin().await;
        let a = tenant_fixture(&admin, &uniq("ta")).await;
        let mut actors = vec![Actor::new("system-admin", admin.clone()).await];
        actors.extend(tenant_cast(app, &admin, &a).await);
        let mut own_tokens = vec![];
        for actor in &actors {
            let (status, list) = actor.api.get("/v1/tokens").await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{} GET /v1/tokens: {list}",
                actor.role
            );
            own_tokens.push(listed_ids(&list).first().expect("a token").clone());
        }
        let member_name = uniq("member");
        let member = id_of(
            &admin
                .create(
                    "/v1/users",
                    json!({"username": member_name, "password": PASSWORD, "tenant_id": a.tenant}),
                )
                .await,
        );
        let member_session = app.login(&member_name, PASSWORD).await;
        let member_token = id_of(
            &member_session
                .create("/v1/tokens", json!({"name": uniq("member")}))
                .await["token"],
        );
        let (_, me) = actors[2].api.get("/v1/me").await;
        let editor_binding = me["bindings"][0]["id"]
            .as_str()
            .expect("editor's binding")
            .to_string();
        let (_, events) = admin
            .get(&format!("/v1/events?object_id={}", a.cluster))
            .await;
        let event = listed_ids(&events)
            .first()
            .expect("the cluster's creation is an event")
            .clone();
        let pack = insert_pack(app);
        World {
            admin,
            a,
            actors,
            own_tokens,
            member,
            member_session,
            member_token,
            editor_binding,
            event,
            pack,
        }
    }

    async fn fresh_project(&self) -> String {
        id_of(
            &self
                .admin
                .create(
                    "/v1/projects",
                    json!({"tenant_id": self.a.tenant, "name": uniq("victim")}),
                )
                .await,
        )
    }

    /// An object of `res` made only to be deleted by `who`.
    async fn victim(&self, res: Res, who: usize) -> String {
        let a = &self.a;
        let admin = &self.admin;
        match res {
            Res::Tenants => id_of(
                &admin
                    .create("/v1/tenants", json!({"name": uniq("victim")}))
                    .await,
            ),
            Res::Projects => self.fresh_project().await,
            Res::Users => id_of(
                &admin
                    .create(
                        "/v1/users",
                        json!({"username": uniq("victim"), "password": PASSWORD, "tenant_id": a.tenant}),
                    )
                    .await,
            ),
            Res::RoleBindings => {
                let project = self.fresh_project().await;
                id_of(
                    &admin
                        .create(
                            "/v1/role-bindings",
                            json!({"user_id": self.member, "role": "project-viewer", "project_id": project}),
                        )
                        .await,
                )
            }
            Res::OwnTokens => id_of(
                &self.actors[who]
                    .api
                    .create("/v1/tokens", json!({"name": uniq("victim")}))
                    .await["token"],
            ),
            Res::OthersTokens => id_of(
                &self
                    .member_session
                    .create("/v1/tokens", json!({"name": uniq("victim")}))
                    .await["token"],
            ),
            Res::CloudAccounts => id_of(
                &admin
                    .create(
                        "/v1/cloud-accounts",
                        account_body(&a.project, &uniq("victim"), "u", "victim-password"),
                    )
                    .await,
            ),
            Res::Profiles => id_of(
                &admin
                    .create("/v1/profiles", profile_body(&a.project, &uniq("victim")))
                    .await["profile"],
            ),
            Res::Clusters => id_of(
                &admin
                    .create(
                        "/v1/clusters",
                        cluster_body(&a.project, &uniq("victim"), &a.profile, &a.cloud_account),
                    )
                    .await,
            ),
            other => panic!("no victims of {other:?}"),
        }
    }

    /// The request of one cell; `succeeds` says whether a delete needs an object of its own.
    async fn request(&self, res: Res, op: Op, who: usize, succeeds: bool) -> Req {
        use Method as M;
        let a = &self.a;
        let me = &self.actors[who].user_id;
        // A delete expected to succeed gets an object of its own; a refused one aims at A's.
        let victim = if succeeds && op == Op::Delete {
            Some(self.victim(res, who).await)
        } else {
            None
        };
        let target = |fixture: &str| victim.clone().unwrap_or_else(|| fixture.to_string());
        match (res, op) {
            (Res::Tenants, Op::List) => Req::list("/v1/tenants", &a.tenant),
            (Res::Tenants, Op::Get) => Req::new(M::GET, format!("/v1/tenants/{}", a.tenant), None),
            (Res::Tenants, Op::Create) => {
                Req::new(M::POST, "/v1/tenants", Some(json!({"name": uniq("new")})))
            }
            (Res::Tenants, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/tenants/{}", a.tenant),
                Some(json!({"description": format!("by {}", ROLES[who])})),
            ),
            (Res::Tenants, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/tenants/{}", target(&a.tenant)),
                None,
            ),

            (Res::Projects, Op::List) => Req::list("/v1/projects", &a.project),
            (Res::Projects, Op::Get) => {
                Req::new(M::GET, format!("/v1/projects/{}", a.project), None)
            }
            (Res::Projects, Op::Create) => Req::new(
                M::POST,
                "/v1/projects",
                Some(json!({"tenant_id": a.tenant, "name": uniq("new")})),
            ),
            (Res::Projects, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/projects/{}", a.project),
                Some(json!({"description": format!("by {}", ROLES[who])})),
            ),
            (Res::Projects, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/projects/{}", target(&a.project)),
                None,
            ),

            (Res::Users, Op::List) => Req::list("/v1/users", &self.member),
            (Res::Users, Op::Get) => Req::new(M::GET, format!("/v1/users/{}", self.member), None),
            (Res::Users, Op::Create) => Req::new(
                M::POST,
                "/v1/users",
                Some(json!({"username": uniq("new"), "password": PASSWORD, "tenant_id": a.tenant})),
            ),
            (Res::Users, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/users/{}", self.member),
                Some(json!({"display_name": format!("by {}", ROLES[who]), "disabled": false})),
            ),
            (Res::Users, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/users/{}", target(&self.member)),
                None,
            ),

            (Res::OwnAccount, Op::List) => Req::list("/v1/users", me),
            (Res::OwnAccount, Op::Get) => Req::new(M::GET, format!("/v1/users/{me}"), None),
            (Res::OwnAccount, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/users/{me}"),
                Some(json!({"display_name": "Renamed", "disabled": false})),
            ),
            (Res::OwnAccount, Op::Delete) => Req::new(M::DELETE, format!("/v1/users/{me}"), None),

            (Res::RoleBindings, Op::List) => Req::list("/v1/role-bindings", &self.editor_binding),
            (Res::RoleBindings, Op::Get) => Req::new(
                M::GET,
                format!("/v1/role-bindings/{}", self.editor_binding),
                None,
            ),
            // Granting itself a viewer role in P: only admins of the tenant may.
            (Res::RoleBindings, Op::Create) => Req::new(
                M::POST,
                "/v1/role-bindings",
                Some(json!({"user_id": me, "role": "project-viewer", "project_id": a.project})),
            ),
            (Res::RoleBindings, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/role-bindings/{}", self.editor_binding),
                Some(json!({"user_id": me, "role": "project-editor", "project_id": a.project})),
            ),
            (Res::RoleBindings, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/role-bindings/{}", target(&self.editor_binding)),
                None,
            ),

            (Res::OwnTokens, Op::List) => Req::list("/v1/tokens", &self.own_tokens[who]),
            (Res::OwnTokens, Op::Get) => {
                Req::new(M::GET, format!("/v1/tokens/{}", self.own_tokens[who]), None)
            }
            (Res::OwnTokens, Op::Create) => Req::new(
                M::POST,
                "/v1/tokens",
                Some(json!({"name": uniq("new"), "expires_in_days": 1})),
            ),
            (Res::OwnTokens, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/tokens/{}", self.own_tokens[who]),
                Some(json!({"name": "renamed"})),
            ),
            (Res::OwnTokens, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/tokens/{}", target("(own token, always a fresh one)")),
                None,
            ),

            (Res::OthersTokens, Op::List) => Req::list("/v1/tokens", &self.member_token),
            (Res::OthersTokens, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/tokens/{}", target(&self.member_token)),
                None,
            ),

            (Res::CloudAccounts, Op::List) => Req::list("/v1/cloud-accounts", &a.cloud_account),
            (Res::CloudAccounts, Op::Get) => Req::new(
                M::GET,
                format!("/v1/cloud-accounts/{}", a.cloud_account),
                None,
            ),
            (Res::CloudAccounts, Op::Create) => Req::new(
                M::POST,
                "/v1/cloud-accounts",
                Some(account_body(&a.project, &uniq("new"), "u", "new-password")),
            ),
            (Res::CloudAccounts, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/cloud-accounts/{}", a.cloud_account),
                Some(json!({"endpoint": format!("https://{}.example.local/sdk", ROLES[who])})),
            ),
            (Res::CloudAccounts, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/cloud-accounts/{}", target(&a.cloud_account)),
                None,
            ),

            (Res::Profiles, Op::List) => Req::list("/v1/profiles", &a.profile),
            (Res::Profiles, Op::Get) => {
                Req::new(M::GET, format!("/v1/profiles/{}", a.profile), None)
            }
            (Res::Profiles, Op::Create) => Req::new(
                M::POST,
                "/v1/profiles",
                Some(profile_body(&a.project, &uniq("new"))),
            ),
            (Res::Profiles, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/profiles/{}", a.profile),
                Some(json!({"description": format!("by {}", ROLES[who])})),
            ),
            (Res::Profiles, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/profiles/{}", target(&a.profile)),
                None,
            ),

            (Res::Revisions, Op::List) => Req::new(
                M::GET,
                format!("/v1/profiles/{}/revisions", a.profile),
                None,
            ),
            (Res::Revisions, Op::Get) => Req::new(
                M::GET,
                format!("/v1/profiles/{}/revisions/1", a.profile),
                None,
            ),
            (Res::Revisions, Op::Create) => Req::new(
                M::POST,
                format!("/v1/profiles/{}/revisions", a.profile),
                Some(revision_body()),
            ),
            (Res::Revisions, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/profiles/{}/revisions/1", a.profile),
                Some(revision_body()),
            ),
            (Res::Revisions, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/profiles/{}/revisions/1", a.profile),
                None,
            ),

            (Res::Clusters, Op::List) => Req::list("/v1/clusters", &a.cluster),
            (Res::Clusters, Op::Get) => {
                Req::new(M::GET, format!("/v1/clusters/{}", a.cluster), None)
            }
            (Res::Clusters, Op::Create) => Req::new(
                M::POST,
                "/v1/clusters",
                Some(cluster_body(
                    &a.project,
                    &uniq("new"),
                    &a.profile,
                    &a.cloud_account,
                )),
            ),
            (Res::Clusters, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/clusters/{}", a.cluster),
                Some(cluster_update_body()),
            ),
            (Res::Clusters, Op::Delete) => Req::new(
                M::DELETE,
                format!("/v1/clusters/{}", target(&a.cluster)),
                None,
            ),

            (Res::Events, Op::List) => Req::list("/v1/events", &self.event),
            (Res::Events, Op::Get) => Req::new(M::GET, format!("/v1/events/{}", self.event), None),
            (Res::Events, Op::Create) => Req::new(
                M::POST,
                "/v1/events",
                Some(json!({"object_id": a.cluster, "message": "forged"})),
            ),
            (Res::Events, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/events/{}", self.event),
                Some(json!({"message": "forged"})),
            ),
            (Res::Events, Op::Delete) => {
                Req::new(M::DELETE, format!("/v1/events/{}", self.event), None)
            }

            (Res::Packs, Op::List) => Req::list("/v1/packs", &self.pack),
            (Res::Packs, Op::Get) => Req::new(M::GET, format!("/v1/packs/{}", self.pack), None),
            (Res::Packs, Op::Create) => Req::new(
                M::POST,
                "/v1/packs",
                Some(json!({"name": "evil", "version": "1.0.0", "layer_type": "addon"})),
            ),
            (Res::Packs, Op::Update) => Req::new(
                M::PUT,
                format!("/v1/packs/{}", self.pack),
                Some(json!({"description": "changed"})),
            ),
            (Res::Packs, Op::Delete) => {
                Req::new(M::DELETE, format!("/v1/packs/{}", self.pack), None)
            }

            (Res::Audit, Op::List) => Req::new(M::GET, "/v1/audit", None),
            (Res::Audit, Op::Create) => Req::new(
                M::POST,
                "/v1/audit",
                Some(json!({"actor": "nobody", "action": "forged"})),
            ),
            (Res::Audit, Op::Update) => Req::new(M::PUT, "/v1/audit", Some(json!({}))),
            (Res::Audit, Op::Delete) => Req::new(M::DELETE, "/v1/audit", None),
            (Res::AuditExport, Op::List) => Req::new(M::GET, "/v1/audit/export", None),
            (Res::AuditVerify, Op::Get) => Req::new(M::GET, "/v1/audit/verify", None),

            (Res::Metrics, Op::Get) => Req::new(M::GET, "/metrics", None),
            (Res::Metrics, Op::Create) => Req::new(M::POST, "/metrics", Some(json!({}))),

            (res, op) => panic!("the matrix has no request for {op:?} {res:?}"),
        }
    }

    /// What a system admin sees of `res` (plus the other user's tokens): must not change when
    /// a request is refused.
    async fn snapshot(&self, res: Res) -> Option<String> {
        let paths: Vec<String> = match res {
            Res::Tenants => vec!["/v1/tenants?limit=500".into()],
            Res::Projects => vec!["/v1/projects?limit=500".into()],
            Res::Users | Res::OwnAccount => vec!["/v1/users?limit=500".into()],
            Res::RoleBindings => vec!["/v1/role-bindings?limit=500".into()],
            Res::OthersTokens => {
                let (status, list) = self.member_session.get("/v1/tokens").await;
                assert_eq!(status, StatusCode::OK);
                return Some(list.to_string());
            }
            Res::CloudAccounts => vec!["/v1/cloud-accounts?limit=500".into()],
            Res::Profiles => vec!["/v1/profiles?limit=500".into()],
            Res::Revisions => vec![
                format!("/v1/profiles/{}", self.a.profile),
                format!("/v1/profiles/{}/revisions", self.a.profile),
            ],
            Res::Clusters => vec!["/v1/clusters?limit=500".into()],
            Res::Events => vec!["/v1/events?limit=500".into()],
            Res::Packs => vec!["/v1/packs?limit=500".into()],
            // Own tokens record their last use; the audit log records every refusal.
            Res::OwnTokens | Res::Audit | Res::AuditExport | Res::AuditVerify | Res::Metrics => {
                return None
            }
        };
        let mut out = String::new();
        for p in paths {
            let (status, mut body) = self.admin.get(&p).await;
            assert_eq!(status, StatusCode::OK, "system-admin GET {p}: {body}");
            // A cluster's status and conditions are the orchestrator's, written in the
            // background (the fixture's accounts point at no real vCenter): not a user's change.
            // Same for the end of an accepted deletion.
            if let Some(items) = body.get_mut("items").and_then(|i| i.as_array_mut()) {
                // A cluster whose deletion was accepted goes away when the orchestrator is done.
                items.retain(|i| i["status"] != "Deleting");
                for item in items {
                    if let Some(o) = item.as_object_mut() {
                        if o.contains_key("node_pools") {
                            o.remove("status");
                            o.remove("conditions");
                        }
                    }
                }
            }
            out.push_str(&body.to_string());
        }
        Some(out)
    }
}

/// Assert one answer against its expectation.
fn check(label: &str, expect: E, r: &Reply, listed: Option<&str>) {
    let status = r.status.as_u16();
    let text = &r.text;
    match expect {
        Listed | Unlisted => {
            assert_eq!(status, 200, "{label}: {text}");
            let object = listed.expect("list rows name their object");
            let present = listed_ids(&r.body).iter().any(|id| id == object);
            assert_eq!(
                present,
                matches!(expect, Listed),
                "{label}: {object} should {}be listed: {text}",
                if matches!(expect, Listed) { "" } else { "not " }
            );
        }
        Is(s) => {
            assert_eq!(status, s, "{label}: {text}");
            let problem = match s {
                403 => Some("/problems/forbidden"),
                404 => Some("/problems/not-found"),
                _ => None,
            };
            if let Some(p) = problem {
                assert_eq!(r.body["type"], p, "{label}: {text}");
            }
        }
        Bad(field) => {
            assert_eq!(status, 400, "{label}: {text}");
            assert_eq!(r.body["field"], field, "{label}: {text}");
        }
        NoRoute => {
            assert_eq!(status, 404, "{label}: {text}");
            assert_eq!(r.body["type"], "/problems/no-such-route", "{label}: {text}");
        }
    }
}

#[tokio::test]
async fn rbac_matrix_for_every_role_resource_and_operation() {
    let app = TestApp::start();
    let w = World::build(&app).await;
    assert_eq!(w.actors.len(), ROLES.len());
    for (who, actor) in w.actors.iter().enumerate() {
        assert_eq!(
            actor.role, ROLES[who],
            "actors are in the matrix's column order"
        );
    }
    let mut cells = 0;
    for &(res, op, expects) in MATRIX {
        for (who, actor) in w.actors.iter().enumerate() {
            let expect = expects[who];
            let succeeds = matches!(expect, Is(200..=299));
            let req = w.request(res, op, who, succeeds).await;
            let before = if succeeds || req.method == Method::GET {
                None
            } else {
                w.snapshot(res).await
            };
            let (label, r) = actor.send(req.method.clone(), &req.path, req.body).await;
            check(&label, expect, &r, req.listed.as_deref());
            if let Some(before) = before {
                let after = w.snapshot(res).await.expect("snapshot");
                assert_eq!(before, after, "{label} was refused but changed something");
            }
            cells += 1;
        }
    }
    assert!(cells >= 300, "only {cells} cells checked");
}

// ---------------------------------------------------------------------------------------------
// 2. Tenant isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_tenants_objects_do_not_exist_for_tenant_roles() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let a = tenant_fixture(&admin, &uniq("ta")).await;
    let b_name = uniq("tb");
    let b = tenant_fixture(&admin, &b_name).await;
    let b_username = uniq("b-user");
    let b_user = id_of(
        &admin
            .create(
                "/v1/users",
                json!({"username": b_username, "password": PASSWORD, "tenant_id": b.tenant}),
            )
            .await,
    );
    let b_binding = id_of(
        &admin
            .create(
                "/v1/role-bindings",
                json!({"user_id": b_user, "role": "project-editor", "project_id": b.project}),
            )
            .await,
    );
    let b_session = app.login(&b_username, PASSWORD).await;
    let b_token = id_of(
        &b_session
            .create("/v1/tokens", json!({"name": "b-automation"}))
            .await["token"],
    );
    let actors = tenant_cast(&app, &admin, &a).await;

    // Everything of B, and everything at all, as a system admin sees it before the probing.
    let mut b_events = vec![];
    for object in [&b.cloud_account, &b.profile, &b.cluster] {
        let (_, list) = admin.get(&format!("/v1/events?object_id={object}")).await;
        b_events.extend(listed_ids(&list));
    }
    assert!(b_events.len() >= 3, "B's objects have events: {b_events:?}");
    let mut b_ids = vec![
        b.tenant.clone(),
        b.project.clone(),
        b_user.clone(),
        b_binding.clone(),
        b.cloud_account.clone(),
        b.profile.clone(),
        b.cluster.clone(),
        b_token.clone(),
        b_name.clone(),
        b_username.clone(),
    ];
    b_ids.extend(b_events.iter().cloned());
    let snapshot = || async {
        let mut out = String::new();
        for p in [
            "/v1/tenants?limit=500".to_string(),
            "/v1/projects?limit=500".into(),
            "/v1/users?limit=500".into(),
            "/v1/role-bindings?limit=500".into(),
            "/v1/cloud-accounts?limit=500".into(),
            "/v1/profiles?limit=500".into(),
            format!("/v1/profiles/{}/revisions", b.profile),
            format!("/v1/profiles/{}/revisions", a.profile),
            "/v1/clusters?limit=500".into(),
            "/v1/events?limit=500".into(),
        ] {
            let (status, body) = admin.get(&p).await;
            assert_eq!(status, StatusCode::OK, "system-admin GET {p}: {body}");
            out.push_str(&body.to_string());
        }
        let (_, tokens) = b_session.get("/v1/tokens").await;
        out.push_str(&tokens.to_string());
        out
    };
    let before = snapshot().await;

    // Reading, changing or deleting any object of B: 404, exactly as for an id naming nothing.
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/tenants/{b}".into(), None),
        (
            Method::PUT,
            "/v1/tenants/{b}".into(),
            Some(json!({"description": "x"})),
        ),
        (Method::DELETE, "/v1/tenants/{b}".into(), None),
        (Method::GET, "/v1/projects/{b}".into(), None),
        (
            Method::PUT,
            "/v1/projects/{b}".into(),
            Some(json!({"description": "x"})),
        ),
        (Method::DELETE, "/v1/projects/{b}".into(), None),
        (Method::GET, "/v1/users/{b}".into(), None),
        (
            Method::PUT,
            "/v1/users/{b}".into(),
            Some(json!({"display_name": "x", "disabled": true, "password": "taken-over-account"})),
        ),
        (Method::DELETE, "/v1/users/{b}".into(), None),
        (Method::DELETE, "/v1/role-bindings/{b}".into(), None),
        (Method::DELETE, "/v1/tokens/{b}".into(), None),
        (Method::GET, "/v1/cloud-accounts/{b}".into(), None),
        (
            Method::PUT,
            "/v1/cloud-accounts/{b}".into(),
            Some(json!({"endpoint": "https://evil.example/sdk"})),
        ),
        (Method::DELETE, "/v1/cloud-accounts/{b}".into(), None),
        (Method::GET, "/v1/profiles/{b}".into(), None),
        (
            Method::PUT,
            "/v1/profiles/{b}".into(),
            Some(json!({"description": "x"})),
        ),
        (Method::DELETE, "/v1/profiles/{b}".into(), None),
        (Method::GET, "/v1/profiles/{b}/revisions".into(), None),
        (Method::GET, "/v1/profiles/{b}/revisions/1".into(), None),
        (
            Method::POST,
            "/v1/profiles/{b}/revisions".into(),
            Some(revision_body()),
        ),
        (Method::GET, "/v1/clusters/{b}".into(), None),
        (
            Method::PUT,
            "/v1/clusters/{b}".into(),
            Some(cluster_update_body()),
        ),
        (Method::DELETE, "/v1/clusters/{b}".into(), None),
    ];
    let b_object_of = |path: &str| -> String {
        let kind = path
            .trim_start_matches("/v1/")
            .split('/')
            .next()
            .unwrap_or("");
        match kind {
            "tenants" => b.tenant.clone(),
            "projects" => b.project.clone(),
            "users" => b_user.clone(),
            "role-bindings" => b_binding.clone(),
            "tokens" => b_token.clone(),
            "cloud-accounts" => b.cloud_account.clone(),
            "profiles" => b.profile.clone(),
            "clusters" => b.cluster.clone(),
            other => panic!("no object of B for {other}"),
        }
    };
    for actor in &actors {
        for (method, template, body) in &probes {
            let path = template.replace("{b}", &b_object_of(template));
            let (label, r) = actor.send(method.clone(), &path, body.clone()).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{label}: {}", r.text);
            assert_eq!(r.body["type"], "/problems/not-found", "{label}: {}", r.text);
            let nothing = template.replace("{b}", &random_id());
            let (nothing_label, n) = actor.send(method.clone(), &nothing, body.clone()).await;
            assert_eq!(
                n.status,
                StatusCode::NOT_FOUND,
                "{nothing_label}: {}",
                n.text
            );
            assert_eq!(
                problem_shape(&r),
                problem_shape(&n),
                "{label} must answer exactly like {nothing_label}"
            );
            assert_eq!(
                r.headers.get("content-type"),
                n.headers.get("content-type"),
                "{label}"
            );
            for id in &b_ids {
                assert!(
                    !r.text.contains(id.as_str()),
                    "{label} names {id}: {}",
                    r.text
                );
            }
        }
    }

    // Lists never contain anything of B, also when asked for B's objects by id.
    let lists: Vec<(String, Option<&str>)> = vec![
        ("/v1/tenants".into(), Some(b.tenant.as_str())),
        (
            format!("/v1/tenants?name={b_name}"),
            Some(b.tenant.as_str()),
        ),
        ("/v1/projects".into(), Some(b.project.as_str())),
        (
            format!("/v1/projects?tenant_id={}", b.tenant),
            Some(b.project.as_str()),
        ),
        ("/v1/users".into(), Some(b_user.as_str())),
        (
            format!("/v1/users?tenant_id={}", b.tenant),
            Some(b_user.as_str()),
        ),
        ("/v1/role-bindings".into(), Some(b_binding.as_str())),
        (
            format!("/v1/role-bindings?user_id={b_user}"),
            Some(b_binding.as_str()),
        ),
        ("/v1/cloud-accounts".into(), Some(b.cloud_account.as_str())),
        (
            format!("/v1/cloud-accounts?project_id={}", b.project),
            Some(b.cloud_account.as_str()),
        ),
        (
            "/v1/cloud-accounts?kind=vsphere".into(),
            Some(b.cloud_account.as_str()),
        ),
        ("/v1/profiles".into(), Some(b.profile.as_str())),
        (
            format!("/v1/profiles?project_id={}", b.project),
            Some(b.profile.as_str()),
        ),
        ("/v1/profiles?name=base".into(), Some(b.profile.as_str())),
        ("/v1/clusters".into(), Some(b.cluster.as_str())),
        (
            format!("/v1/clusters?project_id={}", b.project),
            Some(b.cluster.as_str()),
        ),
        (
            format!("/v1/clusters?profile_id={}", b.profile),
            Some(b.cluster.as_str()),
        ),
        (
            format!("/v1/clusters?cloud_account_id={}", b.cloud_account),
            Some(b.cluster.as_str()),
        ),
        ("/v1/clusters?name=prod".into(), Some(b.cluster.as_str())),
        ("/v1/events".into(), Some(b.cluster.as_str())),
        (
            format!("/v1/events?object_id={}", b.cluster),
            Some(b.cluster.as_str()),
        ),
        (
            format!("/v1/events?object_id={}", b.cloud_account),
            Some(b.cloud_account.as_str()),
        ),
        ("/v1/tokens".into(), None),
    ];
    for (path, b_object) in &lists {
        // The system admin sees B's object through the same query, so the filters do select it.
        if let Some(object) = b_object {
            let (status, body) = admin.get(path).await;
            assert_eq!(status, StatusCode::OK, "system-admin GET {path}: {body}");
            assert!(
                body.to_string().contains(object),
                "system-admin GET {path} shows B's {object}: {body}"
            );
        }
        for actor in &actors {
            let (label, r) = actor.send(Method::GET, path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
            for id in &b_ids {
                assert!(
                    !r.text.contains(id.as_str()),
                    "{label} shows B's {id}: {}",
                    r.text
                );
            }
        }
    }
    // ... while the tenant admin of A does see A's objects in the same lists.
    for (path, object) in [
        ("/v1/tenants", &a.tenant),
        ("/v1/projects", &a.project),
        ("/v1/cloud-accounts", &a.cloud_account),
        ("/v1/profiles?name=base", &a.profile),
        ("/v1/clusters?name=prod", &a.cluster),
        ("/v1/events", &a.cluster),
    ] {
        let (label, r) = actors[0].send(Method::GET, path, None).await;
        assert!(
            r.text.contains(object.as_str()),
            "{label} shows A's {object}: {}",
            r.text
        );
    }

    // Creating anything in B (or pointing at B's objects) is refused as for ids naming nothing.
    for actor in &actors {
        let me = &actor.user_id;
        let creates: Vec<(&str, Value, Value, &str)> = vec![
            (
                "/v1/cloud-accounts",
                account_body(&b.project, "x", "u", "p"),
                account_body(&random_id(), "x", "u", "p"),
                "project_id",
            ),
            (
                "/v1/profiles",
                profile_body(&b.project, "x"),
                profile_body(&random_id(), "x"),
                "project_id",
            ),
            (
                "/v1/clusters",
                cluster_body(&b.project, "x", &b.profile, &b.cloud_account),
                cluster_body(&random_id(), "x", &b.profile, &b.cloud_account),
                "project_id",
            ),
            (
                "/v1/projects",
                json!({"tenant_id": b.tenant, "name": "x"}),
                json!({"tenant_id": random_id(), "name": "x"}),
                "tenant_id",
            ),
            (
                "/v1/users",
                json!({"username": "x-in-b", "password": PASSWORD, "tenant_id": b.tenant}),
                json!({"username": "x-in-b", "password": PASSWORD, "tenant_id": random_id()}),
                "tenant_id",
            ),
            (
                "/v1/role-bindings",
                json!({"user_id": b_user, "role": "project-viewer", "project_id": a.project}),
                json!({"user_id": random_id(), "role": "project-viewer", "project_id": a.project}),
                "user_id",
            ),
            (
                "/v1/role-bindings",
                json!({"user_id": me, "role": "project-editor", "project_id": b.project}),
                json!({"user_id": me, "role": "project-editor", "project_id": random_id()}),
                "project_id",
            ),
            (
                "/v1/role-bindings",
                json!({"user_id": me, "role": "tenant-admin", "tenant_id": b.tenant}),
                json!({"user_id": me, "role": "tenant-admin", "tenant_id": random_id()}),
                "tenant_id",
            ),
        ];
        for (path, into_b, into_nothing, field) in creates {
            let (label, r) = actor.send(Method::POST, path, Some(into_b.clone())).await;
            let label = format!("{label} {into_b}");
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {}", r.text);
            assert_eq!(r.body["field"], field, "{label}: {}", r.text);
            let (_, n) = actor.send(Method::POST, path, Some(into_nothing)).await;
            assert_eq!(
                problem_shape(&r),
                problem_shape(&n),
                "{label} must answer exactly as for an id naming nothing"
            );
        }
    }
    // A cluster in A's own project cannot use B's profile or cloud account either.
    for actor in &actors[..2] {
        for (body, nothing, field) in [
            (
                cluster_body(&a.project, "x", &b.profile, &a.cloud_account),
                cluster_body(&a.project, "x", &random_id(), &a.cloud_account),
                "profile_id",
            ),
            (
                cluster_body(&a.project, "x", &a.profile, &b.cloud_account),
                cluster_body(&a.project, "x", &a.profile, &random_id()),
                "cloud_account_id",
            ),
        ] {
            let (label, r) = actor.send(Method::POST, "/v1/clusters", Some(body)).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {}", r.text);
            assert_eq!(r.body["field"], field, "{label}: {}", r.text);
            let (_, n) = actor
                .send(Method::POST, "/v1/clusters", Some(nothing))
                .await;
            assert_eq!(problem_shape(&r), problem_shape(&n), "{label}");
        }
    }

    // None of it wrote anything, in B or anywhere else.
    assert_eq!(before, snapshot().await, "refused requests changed state");
}

// ---------------------------------------------------------------------------------------------
// 3. What a tenant admin may grant
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_admin_grants_only_inside_its_tenant_and_never_system_admin() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let a = tenant_fixture(&admin, &uniq("ta")).await;
    let b = tenant_fixture(&admin, &uniq("tb")).await;
    let user_in =
        |tenant: &str| json!({"username": uniq("u"), "password": PASSWORD, "tenant_id": tenant});
    let a_member = id_of(&admin.create("/v1/users", user_in(&a.tenant)).await);
    let b_member = id_of(&admin.create("/v1/users", user_in(&b.tenant)).await);
    // A plain tenant admin of A, and one that is also a viewer in B's project (so B exists for it).
    let plain = Actor::new(
        "tenant-admin",
        user_with_role(
            &app,
            &admin,
            &uniq("tadmin"),
            Some(&a.tenant),
            "tenant-admin",
            json!({"tenant_id": a.tenant}),
        )
        .await,
    )
    .await;
    let straddling_name = uniq("tadmin2");
    let straddling_api = user_with_role(
        &app,
        &admin,
        &straddling_name,
        Some(&a.tenant),
        "tenant-admin",
        json!({"tenant_id": a.tenant}),
    )
    .await;
    let straddling_id = Actor::new("x", straddling_api.clone()).await.user_id;
    admin
        .create(
            "/v1/role-bindings",
            json!({"user_id": straddling_id, "role": "project-viewer", "project_id": b.project}),
        )
        .await;
    let straddling = Actor::new("tenant-admin+viewer-in-B", straddling_api).await;

    let state = || async {
        let mut out = String::new();
        for p in ["/v1/users?limit=500", "/v1/role-bindings?limit=500"] {
            let (status, body) = admin.get(p).await;
            assert_eq!(status, StatusCode::OK, "system-admin GET {p}");
            out.push_str(&body.to_string());
        }
        out
    };
    let before = state().await;

    // (actor, request body, expected status, expected field for 400s)
    let system_admin = json!({"user_id": a_member, "role": "system-admin"});
    let cases: Vec<(&Actor, &str, Value, u16, Option<&str>)> = vec![
        // Never system-admin: not to a user of its tenant, not to itself.
        (&plain, "/v1/role-bindings", system_admin.clone(), 403, None),
        (
            &plain,
            "/v1/role-bindings",
            json!({"user_id": plain.user_id, "role": "system-admin"}),
            403,
            None,
        ),
        (&straddling, "/v1/role-bindings", system_admin, 403, None),
        // No users outside its tenant, nor system users.
        (
            &plain,
            "/v1/users",
            user_in(&b.tenant),
            400,
            Some("tenant_id"),
        ),
        (
            &plain,
            "/v1/users",
            json!({"username": uniq("sys"), "password": PASSWORD}),
            400,
            Some("tenant_id"),
        ),
        (&straddling, "/v1/users", user_in(&b.tenant), 403, None),
        // No bindings for users of another tenant, in any scope.
        (
            &plain,
            "/v1/role-bindings",
            json!({"user_id": b_member, "role": "project-viewer", "project_id": a.project}),
            400,
            Some("user_id"),
        ),
        (
            &plain,
            "/v1/role-bindings",
            json!({"user_id": b_member, "role": "tenant-admin", "tenant_id": a.tenant}),
            400,
            Some("user_id"),
        ),
        (
            &straddling,
            "/v1/role-bindings",
            json!({"user_id": b_member, "role": "project-viewer", "project_id": b.project}),
            400,
            Some("user_id"),
        ),
        // ... nor roles in another tenant for its own users.
        (
            &plain,
            "/v1/role-bindings",
            json!({"user_id": a_member, "role": "project-viewer", "project_id": b.project}),
            400,
            Some("project_id"),
        ),
        (
            &plain,
            "/v1/role-bindings",
            json!({"user_id": a_member, "role": "tenant-admin", "tenant_id": b.tenant}),
            400,
            Some("tenant_id"),
        ),
        (
            &straddling,
            "/v1/role-bindings",
            json!({"user_id": a_member, "role": "project-editor", "project_id": b.project}),
            403,
            None,
        ),
        (
            &straddling,
            "/v1/role-bindings",
            json!({"user_id": a_member, "role": "tenant-admin", "tenant_id": b.tenant}),
            403,
            None,
        ),
    ];
    for (actor, path, body, status, field) in &cases {
        let (label, r) = actor.send(Method::POST, path, Some(body.clone())).await;
        let label = format!("{label} {body}");
        assert_eq!(r.status.as_u16(), *status, "{label}: {}", r.text);
        if let Some(f) = field {
            assert_eq!(r.body["field"], *f, "{label}: {}", r.text);
        }
    }
    assert_eq!(
        before,
        state().await,
        "refused grants changed users or bindings"
    );
    // Still no system admin: the audit log and metrics stay closed.
    for actor in [&plain, &straddling] {
        for path in ["/v1/audit", "/metrics"] {
            let (label, r) = actor.send(Method::GET, path, None).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{label}");
        }
    }
    let (_, plain_me) = plain.api.get("/v1/me").await;
    assert_eq!(
        plain_me["bindings"].as_array().map(Vec::len),
        Some(1),
        "tenant-admin GET /v1/me: only its tenant-admin binding: {plain_me}"
    );

    // What a tenant admin may do, the same calls inside its tenant succeed.
    plain.api.create("/v1/users", user_in(&a.tenant)).await;
    for body in [
        json!({"user_id": a_member, "role": "project-viewer", "project_id": a.project}),
        json!({"user_id": a_member, "role": "tenant-admin", "tenant_id": a.tenant}),
    ] {
        plain.api.create("/v1/role-bindings", body).await;
    }
}

/// A system admin may live in a tenant (a user's home tenant is where it was created, and a
/// system admin may grant system-admin to any user). The tenant's admin manages the tenant's
/// accounts, but must not be able to reset the password of, disable or delete an account that
/// holds system-admin: resetting the password makes the tenant admin a system admin.
#[tokio::test]
async fn tenant_admin_cannot_take_over_a_system_admin_of_its_tenant() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let a = tenant_fixture(&admin, &uniq("ta")).await;
    let ops_name = uniq("ops");
    let ops = id_of(
        &admin
            .create(
                "/v1/users",
                json!({"username": ops_name, "password": PASSWORD, "tenant_id": a.tenant}),
            )
            .await,
    );
    admin
        .create(
            "/v1/role-bindings",
            json!({"user_id": ops, "role": "system-admin"}),
        )
        .await;
    let tadmin = Actor::new(
        "tenant-admin",
        user_with_role(
            &app,
            &admin,
            &uniq("tadmin"),
            Some(&a.tenant),
            "tenant-admin",
            json!({"tenant_id": a.tenant}),
        )
        .await,
    )
    .await;
    let path = format!("/v1/users/{ops}");
    let mut wrong = vec![];

    // Reset the system admin's password, then log in with it.
    let stolen = "stolen-password-123";
    let (label, r) = tadmin
        .send(
            Method::PUT,
            &path,
            Some(json!({"display_name": "ops", "disabled": false, "password": stolen})),
        )
        .await;
    if !matches!(r.status.as_u16(), 403 | 404) {
        wrong.push(format!("{label} (new password): {} {}", r.status, r.text));
    }
    let (status, _) = app
        .anonymous()
        .post(
            "/v1/login",
            json!({"username": ops_name, "password": stolen}),
        )
        .await;
    if status == StatusCode::OK {
        let taken = app.login_token(&ops_name, stolen).await;
        let (metrics, _) = taken.get("/metrics").await;
        wrong.push(format!(
            "the tenant admin logs in as system admin {ops_name} with the password it set (GET /metrics: {metrics})"
        ));
    }
    // Disable it, then delete it.
    for (method, body) in [
        (
            Method::PUT,
            Some(json!({"display_name": "ops", "disabled": true})),
        ),
        (Method::DELETE, None),
    ] {
        let (label, r) = tadmin.send(method, &path, body).await;
        if !matches!(r.status.as_u16(), 403 | 404) {
            wrong.push(format!("{label}: {} {}", r.status, r.text));
        }
    }
    assert!(
        wrong.is_empty(),
        "a tenant admin controls a system admin's account:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Credentials are write-only
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cloud_account_credentials_are_never_returned_to_any_role() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let a = tenant_fixture(&admin, &uniq("ta")).await;
    let cast = tenant_cast(&app, &admin, &a).await;
    let mut readers = vec![Actor::new("system-admin", admin.clone()).await];
    let mut cast = cast.into_iter();
    readers.extend(cast.by_ref().take(3));
    let nobody = cast.next().expect("no-binding actor");
    let editor = &readers[2];
    assert_eq!(editor.role, "project-editor");

    let secrets = [
        "first-Sup3r-secret-pw",
        "svc-first@vsphere.local",
        "second-Sup3r-secret-pw",
        "svc-second@vsphere.local",
        "vc-secret-password",
        "administrator@vsphere.local",
    ];
    let (label, created) = editor
        .send(
            Method::POST,
            "/v1/cloud-accounts",
            Some(account_body(
                &a.project,
                "creds-acct",
                secrets[1],
                secrets[0],
            )),
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{label}: {}",
        created.text
    );
    let account = id_of(&created.body);
    let mut answers = vec![(label, created)];
    let (label, updated) = editor
        .send(
            Method::PUT,
            &format!("/v1/cloud-accounts/{account}"),
            Some(json!({
                "endpoint": "https://vc2.example.local/sdk",
                "credentials": {"username": secrets[3], "password": secrets[2]}
            })),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{label}: {}", updated.text);
    answers.push((label, updated));

    let reads = [
        format!("/v1/cloud-accounts/{account}"),
        "/v1/cloud-accounts".to_string(),
        format!("/v1/cloud-accounts?project_id={}", a.project),
        "/v1/cloud-accounts?kind=vsphere".into(),
        format!("/v1/cloud-accounts/{}", a.cloud_account),
        format!("/v1/events?object_id={account}"),
        "/v1/clusters".into(),
    ];
    for reader in &readers {
        for path in &reads {
            let (label, r) = reader.send(Method::GET, path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
            answers.push((label, r));
        }
        // The single read shows the account, with only the fact that it has credentials.
        let (label, r) = reader
            .send(Method::GET, &format!("/v1/cloud-accounts/{account}"), None)
            .await;
        assert_eq!(r.body["id"], account.as_str(), "{label}");
        assert_eq!(r.body["has_credentials"], true, "{label}: {}", r.text);
        assert!(r.body.get("credentials").is_none(), "{label}: {}", r.text);
        let (label, r) = reader.send(Method::GET, "/v1/cloud-accounts", None).await;
        assert!(
            listed_ids(&r.body).contains(&account),
            "{label} lists the account: {}",
            r.text
        );
    }
    // The console shows accounts too, to sessions.
    for reader in &readers {
        let session = app.login(&reader.username, PASSWORD).await;
        let r = session
            .send(Method::GET, "/cloud-accounts", None, &[])
            .await;
        let label = format!("{} GET /cloud-accounts (console)", reader.role);
        assert_eq!(r.status, StatusCode::OK, "{label}");
        assert!(r.text.contains("creds-acct"), "{label} shows the account");
        answers.push((label, r));
    }
    // The audit log records the requests, never their bodies.
    for path in ["/v1/audit?limit=1000", "/v1/audit/export"] {
        let (label, r) = readers[0].send(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{label}");
        assert!(
            r.text.contains(&account),
            "{label} records the account's creation"
        );
        answers.push((label, r));
    }
    let (label, r) = nobody
        .send(Method::GET, &format!("/v1/cloud-accounts/{account}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{label}");
    answers.push((label, r));

    for (label, r) in &answers {
        for secret in secrets {
            assert!(
                !r.text.contains(secret),
                "{label} returned the credential {secret:?}: {}",
                r.text
            );
        }
    }
}
