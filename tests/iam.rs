//! `lakewriter iam-policy` tested for real: a moto server of the test's own with IAM enforcement
//! switched on, an IAM user holding only the printed policy, and that user running the writer
//! through SIGKILLs and restarts, `compact` and `verify`; the same user is refused outside the
//! warehouse prefix. (moto evaluates S3 requests against their resources; it checks Glue
//! requests against `*` only and does not evaluate `s3:prefix` conditions, so this test uses the
//! SQLite catalog, and the Glue and KMS statements are pinned by `access`'s unit test.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestDb;
use support::writer::{command, command_ok, config_path, crash_and_restart, write_config};

/// moto's server (with the Glue check of `scripts/moto_server.py`), whose S3 requests are
/// authorised by IAM but not signature-checked: moto recomputes an S3 signature from the
/// decoded query, so every `ListObjectsV2` with a `/` in its prefix fails its check, from any
/// client (boto3 too). The caller is still identified by its access key, and its policy
/// decides each request.
const MOTO: &str = "import runpy, sys\n\
from moto.iam.access_control import S3IAMRequest\n\
S3IAMRequest.check_signature = lambda self: None\n\
sys.argv = [sys.argv[1]] + sys.argv[2:]\n\
runpy.run_path(sys.argv[0], run_name='__main__')\n";

/// A moto server of this test's own, stopped on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = support::stack()
            .python()
            .args(["-c", MOTO])
            .arg(support::project_dir().join("scripts/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not answer on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// As moto's administrator (before enforcement): the bucket, an object outside the warehouse,
/// a user holding `policy` only, and its keys; then IAM enforcement on. Returns the keys.
fn user_with_policy(moto: &Moto, bucket: &str, policy: &str) -> (String, String) {
    let output = support::stack()
        .python()
        .arg("-c")
        .arg(
            "import sys, boto3, urllib.request\n\
             endpoint, bucket, policy = sys.argv[1:4]\n\
             def client(name):\n\
             \x20   return boto3.client(name, endpoint_url=endpoint, region_name='us-east-1',\n\
             \x20       aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             s3 = client('s3')\n\
             s3.create_bucket(Bucket=bucket)\n\
             s3.put_object(Bucket=bucket, Key='elsewhere/secret.txt', Body=b'not yours')\n\
             iam = client('iam')\n\
             iam.create_user(UserName='lakewriter')\n\
             iam.put_user_policy(UserName='lakewriter', PolicyName='printed',\n\
             \x20   PolicyDocument=policy)\n\
             key = iam.create_access_key(UserName='lakewriter')['AccessKey']\n\
             urllib.request.urlopen(urllib.request.Request(\n\
             \x20   endpoint + '/moto-api/reset-auth', data=b'0', method='POST',\n\
             \x20   headers={'Content-Type': 'text/plain'})).read()\n\
             print(key['AccessKeyId'])\n\
             print(key['SecretAccessKey'])\n",
        )
        .args([&moto.endpoint(), bucket, policy])
        .output()
        .expect("run the IAM set-up");
    assert!(
        output.status.success(),
        "IAM set-up: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let id = lines.next().expect("an access key id").to_string();
    let secret = lines.next().expect("a secret key").to_string();
    (id, secret)
}

#[tokio::test]
async fn a_user_with_only_the_printed_policy_runs_crashes_compacts_and_is_refused_elsewhere() {
    let db = TestDb::new("iam_policy").await;
    db.psql(&["-v", "rows=1000", "-f", "sql/orders.sql"]);
    let moto = Moto::start();
    let bucket = format!("iam-lake-{}", std::process::id());
    let warehouse = format!("s3://{bucket}/lake");
    let catalog = db.warehouse.path().join("catalog.db");
    let sink = |keys: &str| {
        format!(
            "[sink.sqlite]\npath = \"{}\"\n[sink.s3]\nregion = \"us-east-1\"\n\
             endpoint = \"{}\"\nforce_path_style = true\n{keys}\
             [compaction]\ninterval = \"0\"\norphan_age = \"1s\"\nenforce_orphan_age_floor = false\n",
            catalog.display(),
            moto.endpoint()
        )
    };
    let settings = [("SINK__WAREHOUSE", warehouse.as_str())];

    // the policy, as printed for this configuration
    write_config(&db, &sink(""));
    let policy = command_ok(&db, &["iam-policy"], &settings);
    let document: serde_json::Value = serde_json::from_str(&policy).expect("the policy is JSON");
    assert!(
        policy.contains(&format!("arn:aws:s3:::{bucket}/lake/*")),
        "{policy}"
    );
    assert_eq!(document["Version"], "2012-10-17");

    let (id, secret) = user_with_policy(&moto, &bucket, &policy);
    write_config(
        &db,
        &sink(&format!(
            "access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
        )),
    );

    // the user runs the writer through SIGKILLs, then compact and verify
    crash_and_restart(&db, &settings, 3, 4, 1500).await;
    let compacted = command_ok(&db, &["compact"], &settings);
    assert!(compacted.contains("orders"), "{compacted}");
    let verified = command(&db, &["verify"], &settings);
    assert!(
        verified.status.success(),
        "verify as the user: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // outside its prefix the same user is refused: reading, writing, and a warehouse there
    let config = lakewriter::Config::parse(
        &std::fs::read_to_string(config_path(&db)).expect("the config"),
        &config_path(&db),
        vec![("LAKEWRITER__SINK__WAREHOUSE".to_string(), warehouse.clone())],
    )
    .expect("the config parses");
    let s3 = lakewriter::cloud::s3_client(&config).await;
    let read = s3
        .get_object()
        .bucket(&bucket)
        .key("elsewhere/secret.txt")
        .send()
        .await;
    let read = format!("{:?}", read.err().map(|e| e.into_service_error()));
    assert!(read.contains("AccessDenied"), "{read}");
    let write = s3
        .put_object()
        .bucket(&bucket)
        .key("elsewhere/mine.txt")
        .body(b"x".to_vec().into())
        .send()
        .await;
    let write = format!("{:?}", write.err().map(|e| e.into_service_error()));
    assert!(write.contains("AccessDenied"), "{write}");
    let inside = s3
        .get_object()
        .bucket(&bucket)
        .key(format!(
            "lake/_lakewriter/{}/{}.json",
            db.namespace, db.slot
        ))
        .send()
        .await;
    assert!(inside.is_ok(), "the user reads its own slot record");
    let elsewhere = format!("s3://{bucket}/elsewhere");
    let doctor = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["doctor", "--config"])
        .arg(config_path(&db))
        .env("LAKEWRITER__SINK__WAREHOUSE", &elsewhere)
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot write {elsewhere}/")),
        "{text}"
    );
}

#[tokio::test]
async fn doctor_says_when_the_source_role_has_more_than_it_needs() {
    let db = TestDb::new("iam_doctor").await;
    db.psql(&["-v", "rows=10", "-f", "sql/orders.sql"]);
    let role = format!("{}_role", db.name);
    db.psql(&[
        "-v",
        &format!("role={role}"),
        "-v",
        "password=role-pw",
        "-v",
        &format!("publication={}", db.publication),
        "-f",
        "sql/setup.sql",
    ]);
    write_config(&db, "");
    let doctor = |settings: &[(&str, &str)]| {
        let output = command(&db, &["doctor"], settings);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // the tests' superuser: a warning with the way down
    let text = doctor(&[]);
    assert!(text.contains("role postgres is a superuser"), "{text}");
    assert!(text.contains("-f sql/setup.sql"), "{text}");
    // the role sql/setup.sql makes: nothing more than it needs
    let text = doctor(&[
        ("SOURCE__USER", role.as_str()),
        ("SOURCE__PASSWORD", "role-pw"),
        ("SOURCE__CREATE_PUBLICATION", "false"),
    ]);
    assert!(
        text.contains(&format!(
            "role {role} is no superuser and cannot write to the replicated tables"
        )),
        "{text}"
    );
    assert!(!text.contains("superuser:"), "{text}");
    // given writes, it is told which to revoke
    db.psql(&["-c", &format!("GRANT INSERT ON orders TO \"{role}\"")]);
    let text = doctor(&[
        ("SOURCE__USER", role.as_str()),
        ("SOURCE__PASSWORD", "role-pw"),
        ("SOURCE__CREATE_PUBLICATION", "false"),
    ]);
    assert!(
        text.contains(&format!(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON \"public\".\"orders\" FROM \"{role}\";"
        )),
        "{text}"
    );
}
