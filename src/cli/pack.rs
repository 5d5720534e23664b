//! `palisade pack`: for pack authors, offline — check a pack directory, render its manifests
//! with values, and package it as an OCI image layout (format in `docs/packs.md`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::pack;

/// Pack authoring tasks.
#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Validate a pack directory (pack.toml, values against the schema, every manifest
    /// rendered with the defaults) and print a summary.
    Check {
        /// The pack's directory (the one holding pack.toml).
        dir: PathBuf,
    },
    /// Render the pack's manifests with its defaults, or with a values file merged over them,
    /// and print them as one YAML stream.
    Render {
        dir: PathBuf,
        /// A YAML file of values (a mapping), merged over values.yaml.
        #[arg(long)]
        values: Option<PathBuf>,
    },
    /// Package the pack as an OCI image layout in DIR (absent or empty); prints the manifest
    /// digest. Push it with `skopeo copy oci:DIR:VERSION docker://HOST/shared/packs/NAME:VERSION`.
    Package {
        dir: PathBuf,
        /// The layout directory to write.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Run a pack task; returns the exit code.
pub fn run(cmd: PackCommand) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    match cmd {
        PackCommand::Check { dir } => {
            let p = pack::load(&dir)?;
            let rendered = pack::render(&p, &serde_json::Value::Null)?;
            let m = &p.meta;
            writeln!(
                out,
                "{} {} ({} layer): valid",
                m.name,
                m.version,
                m.layer.as_str()
            )?;
            writeln!(
                out,
                "  kubernetes: {}",
                m.constraints.kubernetes.as_deref().unwrap_or("any")
            )?;
            for r in &m.constraints.requires {
                writeln!(out, "  requires:   {} {}", r.pack, r.version)?;
            }
            writeln!(
                out,
                "  objects:    {} (from {} manifest files)",
                rendered.len(),
                m.contents.manifests.len()
            )?;
            if let Some(c) = &p.chart {
                writeln!(out, "  chart:      {} {}", c.name, c.version)?;
            }
            for i in &m.images {
                match &i.digest {
                    Some(d) => writeln!(out, "  image:      {}@{d}", i.reference)?,
                    None => writeln!(out, "  image:      {}", i.reference)?,
                }
            }
        }
        PackCommand::Render { dir, values } => {
            let p = pack::load(&dir)?;
            let values = match values {
                None => serde_json::Value::Null,
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read the values file {}", path.display())
                    })?;
                    pack::yaml_to_json(&path.display().to_string(), &text)?
                }
            };
            for m in pack::render(&p, &values)? {
                writeln!(
                    out,
                    "---\n# {} (document {})\n{}",
                    m.file,
                    m.document,
                    m.yaml.trim_end()
                )?;
            }
        }
        PackCommand::Package { dir, output } => {
            let a = pack::package_to_layout(&dir, &output)?;
            writeln!(
                out,
                "{} {} ({}): {}",
                a.name,
                a.version,
                a.layer_type.as_str(),
                a.manifest_digest
            )?;
            writeln!(
                out,
                "  layout: {} (tag {})",
                output.display(),
                pack::version_tag(&a.version)
            )?;
        }
    }
    Ok(0)
}
