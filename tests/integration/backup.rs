//! `palisade admin backup`, `restore` and `check` with the OCI registry: a backup holds every
//! blob its database references (verified), a restore brings deleted images back
//! byte-identical, a tampered backup is refused with nothing changed, an older backup without
//! blobs keeps the current blob store, and `check` finds missing and corrupt blobs.

use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{
    call, files_under, plain, push_blob, push_image, run_cli, sha256, Api, TestApp, PASSWORD,
};

/// Where blob `digest` lives in data directory `dir`.
fn blob_file(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    dir.join("registry/blobs/sha256").join(&hex[..2]).join(hex)
}

/// The name of blob `digest` inside a backup archive.
fn blob_entry(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    format!("registry/blobs/sha256/{}/{hex}", &hex[..2])
}

/// Pull `repo:tag`: the manifest's bytes, then the bytes of its config and every layer, with
/// their digests. Panics unless every pull answers 200.
async fn pull_image(api: &Api, repo: &str, tag: &str) -> Vec<(String, Vec<u8>)> {
    let m = call(
        api,
        Method::GET,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[],
        None,
    )
    .await;
    assert_eq!(m.status, StatusCode::OK, "pull manifest: {}", m.describe());
    let manifest = m.json();
    let mut out = vec![(m.header("docker-content-digest"), m.body.clone())];
    let layers = manifest["layers"].as_array().expect("layers").clone();
    for descriptor in std::iter::once(&manifest["config"]).chain(layers.iter()) {
        let digest = descriptor["digest"].as_str().expect("digest").to_string();
        out.push((digest.clone(), pull_blob(api, repo, &digest).await));
    }
    out
}

/// Pull one blob; panics unless it answers 200.
async fn pull_blob(api: &Api, repo: &str, digest: &str) -> Vec<u8> {
    let r = call(
        api,
        Method::GET,
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "pull {digest}: {}", r.describe());
    r.body
}

async fn delete(api: &Api, path: &str) {
    let r = call(api, Method::DELETE, path, &[], None).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "DELETE {path}: {}",
        r.describe()
    );
}

/// Names of the entries of a tar archive, in order.
fn entries_of(archive: &Path) -> Vec<String> {
    let file = std::fs::File::open(archive).expect("open backup");
    tar::Archive::new(file)
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Copy the backup `from` to `to`, letting `edit` change or drop each entry (name, content),
/// then appending `extra` entries.
fn rewrite_backup(
    from: &Path,
    to: &Path,
    mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>,
    extra: &[(&str, &[u8])],
) {
    let mut archive = tar::Archive::new(std::fs::File::open(from).expect("open backup"));
    let mut out = tar::Builder::new(std::fs::File::create(to).expect("create copy"));
    let mut append = |name: &str, content: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o600);
        out.append_data(&mut header, name, content).expect("append");
    };
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read entry");
        if let Some(content) = edit(&name, content) {
            append(&name, &content);
        }
    }
    for (name, content) in extra {
        append(name, content);
    }
    out.finish().expect("finish");
}

/// Every file under `dir` (relative) with the sha256 of its content, and the names of the
/// top-level entries (so an empty new folder shows too): "nothing changed" compares these.
fn tree(dir: &Path) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let files = files_under(dir)
        .into_iter()
        .map(|p| {
            let digest = sha256(&std::fs::read(&p).expect("read"));
            (
                p.strip_prefix(dir).expect("under dir").to_path_buf(),
                digest,
            )
        })
        .collect();
    let mut top: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    (files, top)
}

fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli(args, None)
}

#[tokio::test]
async fn backup_while_running_then_restore_brings_deleted_images_back_byte_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let backup = tmp.path().join("site.backup");
    let backup_arg = backup.to_str().expect("path");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let (manifest, _) = push_image(&admin, "shared/app", "v1", "backed-up").await;
    // A blob larger than the copy buffers, so it crosses many reads on both sides.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let big_digest = push_blob(&admin, "shared/big", &big).await;
    // Pushed and removed again before the backup: its file is still on disk (the collector
    // runs hourly), but the database no longer references it, so the backup skips it.
    let loose = push_blob(&admin, "shared/app", b"unlinked before the backup").await;
    delete(&admin, &format!("/v2/shared/app/blobs/{loose}")).await;
    assert!(blob_file(&dir, &loose).exists());
    let before = pull_image(&admin, "shared/app", "v1").await;
    assert_eq!(before[0].0, manifest);

    let (code, out, err) = cli(&["admin", "backup", "--data-dir", data, backup_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("4 registry blob(s)") && out.contains("0 bundle file(s)"),
        "{out}"
    );
    let entries = entries_of(&backup);
    for digest in before.iter().map(|(d, _)| d).chain([&big_digest]) {
        assert!(
            entries.contains(&blob_entry(digest)),
            "{digest} not in {entries:?}"
        );
    }
    assert!(!entries.contains(&blob_entry(&loose)), "{entries:?}");
    assert_eq!(
        entries[..2],
        ["backup.json".to_string(), "backup.json.sha256".to_string()]
    );
    assert_eq!(
        entries.len(),
        2 + 4 + 4,
        "manifest and its sum, database, 3 key files, 4 blobs"
    );

    // The site loses the images: deleted through the API, then their files go (what the
    // collector does with blobs nothing references).
    delete(&admin, &format!("/v2/shared/app/manifests/{manifest}")).await;
    for (digest, _) in &before[1..] {
        delete(&admin, &format!("/v2/shared/app/blobs/{digest}")).await;
    }
    delete(&admin, &format!("/v2/shared/big/blobs/{big_digest}")).await;
    for digest in before.iter().map(|(d, _)| d).chain([&big_digest]) {
        std::fs::remove_file(blob_file(&dir, digest)).expect("remove blob file");
    }
    let gone = plain(&admin, Method::GET, "/v2/shared/app/manifests/v1").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    app.stop();
    let (code, out, err) = cli(&["admin", "restore", "--data-dir", data, backup_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("4 registry blob(s)") && out.contains("restored"),
        "{out}"
    );
    let kept = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pre-restore-"))
        })
        .expect("pre-restore folder");
    assert!(
        blob_file(&kept, &loose).exists(),
        "the previous blob store is kept aside"
    );
    assert!(
        !blob_file(&dir, &loose).exists(),
        "the blob store is the backup's"
    );

    let app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let after = pull_image(&admin, "shared/app", "v1").await;
    assert!(after == before, "the image is not byte-identical");
    assert!(pull_blob(&admin, "shared/big", &big_digest).await == big);
    let (code, out, _) = cli(&["admin", "check", "--deep", "--data-dir", data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 referenced blob(s) present"), "{out}");
}

#[tokio::test]
async fn restore_refuses_a_tampered_or_incomplete_backup_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let backup = tmp.path().join("site.backup");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let (_, layer) = push_image(&admin, "shared/app", "v1", "tampered").await;
    let (code, out, err) = cli(&[
        "admin",
        "backup",
        "--data-dir",
        data,
        backup.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    app.stop();
    let unchanged = tree(&dir);
    let layer_entry = blob_entry(&layer);
    let hex = layer.strip_prefix("sha256:").expect("digest");

    let tampered = tmp.path().join("tampered.backup");
    rewrite_backup(
        &backup,
        &tampered,
        |name, mut content| {
            if name == layer_entry {
                // Same size, one byte different.
                content[0] ^= 0x20;
            }
            Some(content)
        },
        &[],
    );
    let incomplete = tmp.path().join("incomplete.backup");
    rewrite_backup(
        &backup,
        &incomplete,
        |name, content| (name != layer_entry).then_some(content),
        &[],
    );
    let misplaced = tmp.path().join("misplaced.backup");
    let wrong_prefix = format!("registry/blobs/sha256/{}/{hex}", &hex[2..4]);
    rewrite_backup(
        &backup,
        &misplaced,
        |name, content| (name != layer_entry).then_some(content),
        &[(wrong_prefix.as_str(), b"x")],
    );
    let extra = tmp.path().join("extra.backup");
    rewrite_backup(
        &backup,
        &extra,
        |_, content| Some(content),
        &[(
            "registry/uploads/0b5c6e1e-2d7a-4c35-9f5e-7f4f5b0d9a11",
            b"x",
        )],
    );

    for (archive, expected) in [
        (
            &tampered,
            vec![layer.as_str(), "is corrupt", "nothing was changed"],
        ),
        (
            &incomplete,
            vec![
                layer.as_str(),
                "shared/app",
                "incomplete",
                "nothing was changed",
            ],
        ),
        (&misplaced, vec![wrong_prefix.as_str(), "unexpected entry"]),
        (&extra, vec!["registry/uploads/", "unexpected entry"]),
    ] {
        let path = archive.to_str().expect("path");
        let (code, out, err) = cli(&["admin", "restore", "--data-dir", data, path]);
        assert_eq!(code, 1, "{path}: {out}{err}");
        assert!(err.contains(path), "the archive is named: {err}");
        for needle in expected {
            assert!(err.contains(needle), "{path}: {needle:?} not in {err}");
        }
        assert!(tree(&dir) == unchanged, "{path} changed the data directory");
    }

    // The untouched backup restores.
    let (code, out, err) = cli(&[
        "admin",
        "restore",
        "--data-dir",
        data,
        backup.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn restore_of_a_backup_without_blobs_keeps_the_current_blob_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let backup = tmp.path().join("site.backup");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    push_image(&admin, "shared/app", "v1", "older").await;
    let before = pull_image(&admin, "shared/app", "v1").await;
    let (code, out, err) = cli(&[
        "admin",
        "backup",
        "--data-dir",
        data,
        backup.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    app.stop();
    // What a backup made before blobs (and the manifest) were included looks like.
    let older = tmp.path().join("older.backup");
    rewrite_backup(
        &backup,
        &older,
        |name, content| {
            (!name.starts_with("registry/") && !name.starts_with("backup.json")).then_some(content)
        },
        &[],
    );
    let blobs_before = files_under(&dir.join("registry/blobs"));
    assert_eq!(blobs_before.len(), 3);

    let (code, out, err) = cli(&[
        "admin",
        "restore",
        "--data-dir",
        data,
        older.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("holds no registry blob(s)") && out.contains("kept in place"),
        "{out}"
    );
    assert!(!out.contains("warning"), "every blob is present: {out}");
    assert_eq!(files_under(&dir.join("registry/blobs")), blobs_before);

    let app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    assert!(pull_image(&admin, "shared/app", "v1").await == before);
}

#[tokio::test]
async fn check_and_backup_name_missing_and_corrupt_blobs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let backup = tmp.path().join("site.backup");
    let backup_arg = backup.to_str().expect("path");
    let app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let (manifest, layer) = push_image(&admin, "shared/app", "v1", "checked").await;
    let m: Value = serde_json::from_slice(&pull_image(&admin, "shared/app", "v1").await[0].1)
        .expect("manifest json");
    let config = m["config"]["digest"].as_str().expect("config").to_string();
    // The same layer in a second repository: a problem names both.
    let r = plain(
        &admin,
        Method::POST,
        &format!("/v2/shared/other/blobs/uploads/?mount={layer}&from=shared/app"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "mount: {}", r.describe());

    // Beside the running appliance.
    let (code, out, _) = cli(&["admin", "check", "--data-dir", data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 referenced blob(s) present"), "{out}");

    // A corrupt config (same size): only --deep reads contents; a backup refuses it.
    let config_file = blob_file(&dir, &config);
    let mut bytes = std::fs::read(&config_file).expect("read");
    bytes[0] ^= 0x01;
    std::fs::write(&config_file, &bytes).expect("corrupt");
    let (code, out, _) = cli(&["admin", "check", "--data-dir", data]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cli(&["admin", "check", "--deep", "--data-dir", data]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!("repository shared/app: blob {config} is corrupt")),
        "{out}"
    );
    let (code, out, err) = cli(&["admin", "backup", "--data-dir", data, backup_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&config) && err.contains("corrupt"), "{err}");
    assert!(!backup.exists() && !backup.with_extension("partial").exists());

    // A missing layer file.
    bytes[0] ^= 0x01;
    std::fs::write(&config_file, &bytes).expect("repair");
    std::fs::remove_file(blob_file(&dir, &layer)).expect("remove layer");
    let (code, out, _) = cli(&["admin", "check", "--data-dir", data]);
    assert_eq!(code, 3, "{out}");
    for repo in ["shared/app", "shared/other"] {
        assert!(
            out.contains(&format!("repository {repo}: blob {layer} is missing")),
            "{out}"
        );
    }
    assert!(!out.contains(&manifest), "the manifest is fine: {out}");
    let (code, out, err) = cli(&["admin", "backup", "--data-dir", data, backup_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&layer) && err.contains("shared/app"), "{err}");
    assert!(!backup.exists() && !backup.with_extension("partial").exists());
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A data directory (with an `admin` account) that imported, offline, a signed bundle holding
/// the sample metrics-server pack and a `file` artifact. Returns the artifact's content.
fn data_dir_with_imported_bundle(work: &Path, data: &Path) -> Vec<u8> {
    let key = work.join("signing.pem");
    let (code, _, err) = cli(&["bundle", "keygen", "-o", s(&key)]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &[
            "admin",
            "create-user",
            "--data-dir",
            s(data),
            "--password-stdin",
            "admin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(code, 0, "{err}");
    let public = work.join("signing.pem.pub");
    let (code, _, err) = cli(&["bundle", "trust", "add", s(&public), "--data-dir", s(data)]);
    assert_eq!(code, 0, "{err}");
    // Larger than the copy buffers, so it crosses many reads on both sides.
    let content: Vec<u8> = (0..(2 << 20) + 5u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(work.join("tools.tar"), &content).expect("file");
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/packs/metrics-server");
    let recipe = work.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"[bundle]
name = "site-tools"
version = "1.0.0"
[[pack]]
path = "{}"
[[file]]
path = "tools.tar"
name = "tools"
version = "1"
kind = "file"
"#,
            s(&pack)
        ),
    )
    .expect("recipe");
    let bundle = work.join("site-tools.bundle");
    let (code, out, err) = cli(&[
        "bundle",
        "build",
        s(&recipe),
        "--key",
        s(&key),
        "-o",
        s(&bundle),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["bundle", "import", "--data-dir", s(data), s(&bundle)]);
    assert_eq!(code, 0, "{out}{err}");
    content
}

/// The file of bundle artifact `content` in data directory `dir`.
fn artifact_file(dir: &Path, content: &[u8]) -> PathBuf {
    let hex = sha256(content)["sha256:".len()..].to_string();
    dir.join("artifacts/sha256").join(&hex[..2]).join(hex)
}

/// The one tag of `repo`.
async fn only_tag(api: &Api, repo: &str) -> String {
    let r = plain(api, Method::GET, &format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status, StatusCode::OK, "tags: {}", r.describe());
    let tags = r.json()["tags"].as_array().expect("tags").clone();
    assert_eq!(tags.len(), 1, "{tags:?}");
    tags[0].as_str().expect("tag").to_string()
}

/// Copy `from` to `to` with one byte of entry `name`'s content changed (in place: the tar
/// headers and every other byte stay as they are).
fn flip_one_byte(from: &Path, to: &Path, name: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(from).expect("open backup"));
    let (position, size) = archive
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| e.path().expect("path").to_string_lossy() == name)
        .map(|e| (e.raw_file_position(), e.size()))
        .unwrap_or_else(|| panic!("{name} is not in the backup"));
    let mut bytes = std::fs::read(from).expect("read backup");
    let at = usize::try_from(position + size / 2).expect("offset");
    bytes[at] ^= 0x01;
    std::fs::write(to, bytes).expect("write copy");
}

#[tokio::test]
async fn backup_and_restore_bring_bundle_artifacts_and_packs_back_onto_a_wiped_machine() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = s(&dir);
    let content = data_dir_with_imported_bundle(tmp.path(), &dir);
    let artifact = artifact_file(&dir, &content);
    assert!(artifact.exists(), "the import placed the file artifact");
    let backup = tmp.path().join("site.backup");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    let repo = "shared/packs/metrics-server";
    let tag = only_tag(&admin, repo).await;
    let before = pull_image(&admin, repo, &tag).await;

    // While the appliance runs.
    let (code, out, err) = cli(&["admin", "backup", "--data-dir", data, s(&backup)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 bundle file(s)"), "{out}");
    assert!(out.contains("not included: the broker's log"), "{out}");
    let entries = entries_of(&backup);
    let artifact_entry = artifact
        .strip_prefix(&dir)
        .expect("under the data dir")
        .to_string_lossy()
        .into_owned();
    assert!(entries.contains(&artifact_entry), "{entries:?}");
    for (digest, _) in &before {
        assert!(entries.contains(&blob_entry(digest)), "{digest}");
    }
    app.stop();

    // The machine is lost: nothing of the data directory is left.
    std::fs::remove_dir_all(&dir).expect("wipe");
    let (code, out, err) = cli(&["admin", "restore", "--data-dir", data, s(&backup)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 bundle file(s)") && out.contains("registry blob(s)"),
        "{out}"
    );
    assert_eq!(
        sha256(&std::fs::read(&artifact).expect("artifact restored")),
        sha256(&content)
    );
    let (code, out, err) = cli(&["admin", "check", "--deep", "--data-dir", data]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 file(s) present"), "{out}");

    let app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    assert_eq!(only_tag(&admin, repo).await, tag);
    let after = pull_image(&admin, repo, &tag).await;
    assert!(after == before, "the pack is not served byte-identical");
    for (digest, bytes) in &after {
        assert_eq!(&sha256(bytes), digest, "served under its own digest");
    }
}

#[tokio::test]
async fn restore_refuses_a_backup_with_one_byte_changed_anywhere_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = s(&dir);
    let content = data_dir_with_imported_bundle(tmp.path(), &dir);
    // The appliance's first start makes its CA, which every backup holds.
    TestApp::start_in(&dir, &[]).stop();
    let backup = tmp.path().join("site.backup");
    let (code, out, err) = cli(&["admin", "backup", "--data-dir", data, s(&backup)]);
    assert_eq!(code, 0, "{out}{err}");
    let artifact_entry = artifact_file(Path::new(""), &content)
        .to_string_lossy()
        .into_owned();
    let unchanged = tree(&dir);
    for (entry, says) in [
        (artifact_entry.as_str(), "is corrupt"),
        ("state.db", "state.db is corrupt"),
        ("secret.key", "secret.key is corrupt"),
        ("pki/ca.key", "pki/ca.key is corrupt"),
        ("backup.json", "backup.json"),
        ("backup.json.sha256", "backup.json is damaged"),
    ] {
        let damaged = tmp.path().join("damaged.backup");
        flip_one_byte(&backup, &damaged, entry);
        let (code, out, err) = cli(&["admin", "restore", "--data-dir", data, s(&damaged)]);
        assert_eq!(code, 1, "{entry}: {out}{err}");
        assert!(
            err.contains(says) && err.contains("nothing was changed"),
            "{entry}: {err}"
        );
        assert!(err.contains(s(&damaged)), "the archive is named: {err}");
        assert!(
            tree(&dir) == unchanged,
            "{entry}: the data directory changed"
        );
    }
    // The intact backup restores.
    let (code, out, err) = cli(&["admin", "restore", "--data-dir", data, s(&backup)]);
    assert_eq!(code, 0, "{out}{err}");
}
