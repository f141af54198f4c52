//! The binary as a user meets it: help, configuration errors, exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn lakewriter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(args)
        .env_remove("LAKEWRITER_CONFIG")
        .output()
        .expect("run the lakewriter binary")
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, body).expect("write the config");
    path.display().to_string()
}

#[test]
fn a_misspelt_key_is_refused_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "[source]\ndatabase = \"app\"\n\n[flush]\nmax_latncy = \"5s\"\n",
    );
    let output = lakewriter(&["doctor", "--config", &path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("max_latncy"), "{stderr}");
    assert!(stderr.contains(&path), "{stderr}");
    assert!(
        stderr.contains("max_latency"),
        "the message offers the right key: {stderr}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let output = lakewriter(&["status", "--config", "/nonexistent/lakewriter.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/lakewriter.toml"), "{stderr}");
}

#[test]
fn commands_not_built_yet_exit_2_and_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "[source]\ndatabase = \"app\"\n");
    for args in [
        vec!["run", "--config", &path],
        vec!["compact", "--config", &path],
        vec!["verify", "--config", &path],
        vec!["query", "--config", &path, "SELECT 1"],
        vec!["doctor", "--config", &path],
        vec!["status", "--config", &path],
    ] {
        let output = lakewriter(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // a command that is built must not match this: the test then moves on with it
        if stderr.contains("not built yet") {
            assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(output.stdout.is_empty(), "{args:?} printed a result");
        } else {
            assert_ne!(output.status.code(), Some(2), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn every_command_explains_itself() {
    let top = lakewriter(&["--help"]);
    let text = String::from_utf8_lossy(&top.stdout);
    for command in [
        "run", "compact", "verify", "query", "doctor", "status", "export",
    ] {
        assert!(text.contains(command), "--help lists {command}: {text}");
        let help = lakewriter(&[command, "--help"]);
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("--config"), "{command} --help: {help}");
        assert!(
            help.lines().count() > 5,
            "{command} --help is too thin: {help}"
        );
    }
}

#[test]
fn the_shipped_profiles_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalogs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("catalogs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            lakewriter::Config::load(&path)
                .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 3, "local.toml, glue.toml and glue-local.toml");
}

#[test]
fn export_refuses_contradictory_options_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "[source]\ndatabase = \"app\"\n");
    let to = "postgres://nobody@127.0.0.1:1/none";
    for (args, expected) in [
        (vec!["export", "--config", &path, "--to", to], "--table"),
        (
            vec!["export", "--config", &path, "--table", "orders", "--to", to],
            "schema.table",
        ),
        (
            vec![
                "export",
                "--config",
                &path,
                "--table",
                "public.orders",
                "--to",
                to,
                "--full",
                "--as-of",
                "12",
            ],
            "cannot be used with",
        ),
        (
            vec![
                "export",
                "--config",
                &path,
                "--table",
                "public.orders",
                "--to",
                to,
                "--as-of",
                "yesterday",
            ],
            "neither a snapshot id",
        ),
        (
            vec![
                "export",
                "--config",
                &path,
                "--table",
                "public.orders",
                "--to",
                to,
                "--every",
                "0s",
            ],
            "above zero",
        ),
    ] {
        let output = lakewriter(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
