//! `layerfs images`: the store's images as a table or JSON.

use anyhow::Result;
use serde::Serialize;

use super::{Context, Format, human_size};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  layerfs images\n  layerfs images --format json | jq -r '.[].reference'"
)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Serialize)]
struct Row {
    reference: String,
    digest: String,
    size: u64,
    created: Option<String>,
    platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let mut refs = store.refs()?;
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Row> = refs
        .into_iter()
        .map(|r| match store.image(&r.descriptor) {
            Ok(img) => Row {
                digest: r.source_digest(),
                reference: r.name,
                size: img.size(),
                created: img.config.created.clone(),
                platform: Some(img.platform().to_string()),
                error: None,
            },
            Err(e) => Row {
                digest: r.source_digest(),
                reference: r.name,
                size: r.descriptor.size,
                created: None,
                platform: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    match args.format {
        Format::Json => super::out!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print_table(&rows)?,
    }
    Ok(())
}

fn print_table(rows: &[Row]) -> Result<()> {
    let width = rows
        .iter()
        .map(|r| r.reference.len())
        .max()
        .unwrap_or(0)
        .max("REFERENCE".len());
    super::out!(
        "{:<width$}  {:<12}  {:>10}  {:<19}  PLATFORM",
        "REFERENCE",
        "DIGEST",
        "SIZE",
        "CREATED"
    );
    for r in rows {
        let digest = r.digest.strip_prefix("sha256:").unwrap_or(&r.digest);
        let created = r
            .created
            .as_deref()
            .map(|c| c.chars().take(19).collect::<String>().replace('T', " "))
            .unwrap_or_else(|| "-".into());
        let platform = match (&r.platform, &r.error) {
            (_, Some(e)) => format!("(damaged: {e})"),
            (Some(p), None) => p.clone(),
            (None, None) => "-".into(),
        };
        super::out!(
            "{:<width$}  {:<12}  {:>10}  {:<19}  {platform}",
            r.reference,
            &digest[..digest.len().min(12)],
            human_size(r.size),
            created
        );
    }
    Ok(())
}
