//! What the root package's integration tests share.

use std::path::PathBuf;

/// The built example `name` (`target/<profile>/examples/<name>`; `cargo test` builds the
/// examples).
pub fn example(name: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or("no deps folder")?;
    let profile = deps.parent().ok_or("no profile folder")?;
    let path = profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        return Err(format!(
            "{} is not built: run `cargo test` (which builds the examples)",
            path.display()
        )
        .into());
    }
    Ok(path)
}
