//! Running child commands the same way in every task: announce the step, echo the
//! command line, inherit stdio, and turn any failure into an error that names the
//! command, so a red CI log says what broke without scrolling back.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Prints a task-level heading, runs `body`, and names the step if it fails.
pub fn step<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("\n=== {name} ===");
    body().with_context(|| format!("step `{name}` failed"))
}

/// Prints the heading of one part of a step (e.g. one setup check).
pub fn part(title: &str) {
    println!("--> {title}");
}

/// Prints what a part found or did, indented under its heading.
pub fn note(message: &str) {
    println!("    {message}");
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd.status().with_context(|| cannot_start(cmd, &line))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; a failure carries its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| cannot_start(cmd, &line))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `cargo`, the same one that runs this xtask, started in the workspace root.
pub fn cargo(workspace: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace);
    cmd
}

fn cannot_start(cmd: &Command, line: &str) -> String {
    format!(
        "could not start `{line}` (is `{}` installed and on PATH?)",
        cmd.get_program().to_string_lossy()
    )
}

/// The command as a shell-like line, including the environment it sets. The
/// program is shown by file name: `$CARGO` is a long toolchain path.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.display(), quote(value?))))
        .collect();
    let program = Path::new(cmd.get_program());
    words.push(
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    );
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_env_program_name_and_quoted_args() {
        let mut cmd = Command::new("/opt/toolchain/bin/cargo");
        cmd.env("LLVM_PREFIX", "/p")
            .args(["test", "--", "a filter", "it's"]);
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/p cargo test -- 'a filter' 'it'\''s'"
        );
    }
}
