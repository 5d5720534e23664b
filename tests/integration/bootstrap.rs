//! Bootstrap data passes cloud-init's own schema check (`cloud-init schema`, Debian package
//! cloud-init), for every kind of machine the orchestrator renders.

use std::process::Command;

use palisade::model::NodeRole;
use palisade::orchestrator::bootstrap::{
    render, ApplianceEndpoints, ClusterSecrets, KubernetesSettings, MachineBootstrap,
};
use palisade::providers::StaticIp;

/// Run `cloud-init schema` on a user-data document; panics with its output when invalid.
pub fn assert_valid_cloud_config(label: &str, user_data: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("user-data");
    std::fs::write(&path, user_data).expect("write user-data");
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .expect("cloud-init must be installed (Debian package cloud-init; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("Valid cloud-config"),
        "{label}: cloud-init schema refused the user-data:\n{text}\n--- user-data ---\n{user_data}"
    );
}

#[test]
fn every_rendered_user_data_passes_cloud_init_schema() {
    let appliance = ApplianceEndpoints {
        url: "https://palisade.lan:8443".into(),
        registry: "palisade.lan:8443".into(),
        broker: "palisade.lan:8444".into(),
        ca_pem:
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUY2E=\n-----END CERTIFICATE-----\n"
                .into(),
    };
    let kubernetes =
        KubernetesSettings::from_layer("1.30.4", &serde_json::json!({"pod_cidr": "10.42.0.0/16"}));
    let secrets = ClusterSecrets::generate();
    let ip = StaticIp {
        address: "10.20.0.31/24".into(),
        gateway: "10.20.0.1".into(),
        dns: vec!["10.20.0.2".into(), "10.20.0.3".into()],
    };
    let cases = [
        ("first control plane", NodeRole::ControlPlane, true, None),
        (
            "joining control plane",
            NodeRole::ControlPlane,
            false,
            Some(&ip),
        ),
        ("worker", NodeRole::Worker, false, Some(&ip)),
        ("worker on DHCP", NodeRole::Worker, false, None),
    ];
    for (label, role, first, static_ip) in cases {
        let b = render(&MachineBootstrap {
            appliance: &appliance,
            cluster_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            cluster_name: "prod-east",
            machine_name: "prod-east-cp-0-0193a1",
            role,
            first_control_plane: first,
            control_plane_endpoint: "10.20.0.10",
            kubernetes: &kubernetes,
            secrets: &secrets,
            static_ip,
        });
        assert_valid_cloud_config(label, &b.user_data);
        // The only secrets are the one-time tokens: never the appliance's own keys.
        assert!(!b.user_data.contains("PRIVATE KEY"), "{label}");
        assert_eq!(b.network_config.is_some(), static_ip.is_some(), "{label}");
    }
}

#[test]
fn the_schema_check_refuses_a_broken_document() {
    // The check above must be able to fail: a document cloud-init rejects.
    let result = std::panic::catch_unwind(|| {
        assert_valid_cloud_config("broken", "#cloud-config\nruncmd: 5\n");
    });
    assert!(result.is_err());
}
