//! `sluice init` on a sample of each kind of repository it recognises: the
//! written sluice.yaml validates and carries the commands it guessed.

use std::process::Command;

use crate::support::{SLUICE, tempdir};

fn init(files: &[(&str, &str)]) -> (String, String) {
    let dir = tempdir();
    let repo = dir.path().join("my-service");
    for (file, text) in files {
        let path = repo.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&repo).unwrap();
    let out = Command::new(SLUICE)
        .arg("init")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = repo.join("sluice.yaml");
    let checked = Command::new(SLUICE)
        .arg("validate")
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let again = Command::new(SLUICE)
        .arg("init")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "init keeps an existing sluice.yaml"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    (
        std::fs::read_to_string(spec).unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn each_kind_of_repository_gets_a_valid_starting_point() {
    let (rust, said) = init(&[(
        "Cargo.toml",
        "[package]\nname = \"billing\"\nversion = \"0.1.0\"\n",
    )]);
    assert!(said.contains("Rust (Cargo)"), "{said}");
    assert!(
        rust.contains("service: billing"),
        "the project's name: {rust}"
    );
    assert!(
        rust.contains("cargo test --locked") && rust.contains("target/release/billing"),
        "{rust}"
    );

    let (node, _) = init(&[
        (
            "package.json",
            r#"{"scripts": {"test": "jest", "build": "tsc", "start": "node dist/index.js"}, "dependencies": {"express": "^4"}}"#,
        ),
        ("package-lock.json", "{}"),
        ("dist/index.js", ""),
    ]);
    assert!(
        node.contains("npm ci --no-audit --no-fund && npm test") && node.contains("npm run build"),
        "{node}"
    );
    assert!(
        node.contains("exec node dist/index.js")
            && node.contains("dist/")
            && node.contains("node_modules/"),
        "{node}"
    );

    let (python, _) = init(&[
        (
            "pyproject.toml",
            "[project]\nname = \"shop\"\n[project.optional-dependencies]\ntest = [\"pytest\"]\n",
        ),
        ("tests/test_x.py", ""),
    ]);
    assert!(python.contains("python3 -m pytest -q"), "{python}");
    assert!(
        python.contains("service: shop\n"),
        "the project's name: {python}"
    );
    assert!(
        python.contains("# run:"),
        "no start command to guess: {python}"
    );

    let (setup, _) = init(&[("setup.py", "from setuptools import setup\n")]);
    assert!(setup.contains("python3 -m unittest discover -q"), "{setup}");

    let (requirements, _) = init(&[
        ("requirements.txt", "flask\n"),
        ("app.py", ""),
        ("tests/test_app.py", ""),
    ]);
    assert!(
        requirements.contains("pip install --quiet --target .deps -r requirements.txt")
            && requirements.contains("PYTHONPATH=.deps exec python3 app.py")
            && requirements.contains(".deps/"),
        "{requirements}"
    );

    let (go, _) = init(&[("go.mod", "module example.com/acme/api\n\ngo 1.22\n")]);
    assert!(
        go.contains("go test ./...") && go.contains("go build -o bin/api ."),
        "{go}"
    );

    let (make, _) = init(&[("Makefile", "all:\n\tcc main.c\n\ntest:\n\t./run-tests\n")]);
    assert!(
        make.contains("run: make\n") && make.contains("make test"),
        "{make}"
    );

    let (nothing, said) = init(&[("README.md", "# hi\n")]);
    assert!(said.contains("unrecognised"), "{said}");
    assert!(nothing.contains("found no build system"), "{nothing}");
}

/// Runs `sluice init` on a sample project, then the file it wrote for real:
/// CI builds and tests it, dev deploys it, and its health check passes.
async fn init_runs_end_to_end(name: &str, files: &[(&str, &str)]) {
    init_runs_end_to_end_with(name, files, &[]).await
}

async fn init_runs_end_to_end_with(name: &str, files: &[(&str, &str)], options: &[&str]) {
    use crate::support::{GitRepo, Server};
    let dir = tempdir();
    let server = Server::start_with(&dir.path().join("data"), None, options);
    let repo = GitRepo::new(dir.path(), name);
    for (file, text) in files {
        repo.write(file, text);
    }
    let out = Command::new(SLUICE)
        .arg("init")
        .arg(&repo.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tests run side by side: the entry point on a port the kernel chooses.
    let spec = std::fs::read_to_string(repo.path.join("sluice.yaml"))
        .unwrap()
        .replace("127.0.0.1:8081", "127.0.0.1:0")
        .replace("127.0.0.1:8082", "127.0.0.1:0");
    repo.write("sluice.yaml", &spec);
    repo.write(".gitignore", "node_modules/\n.deps/\ntarget/\nbin/\n");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "as sluice init wrote it"]);
    server.add_repo(&repo);
    let run = server.wait_run("the first run", |_| true).await;
    assert_eq!(
        run["status"],
        "success",
        "{run:#}\n{spec}\n{:?}",
        server.logs(&run).await
    );
    let service = spec
        .lines()
        .find_map(|l| l.strip_prefix("service: "))
        .unwrap()
        .to_string();
    let dev = server.wait_env(&service, "dev", 1, 1).await;
    let answer = reqwest::get(format!("http://{}/", dev["listen"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{spec}");
    // prod waits for an approval: `status` lists it all the same.
    let status = server.get(&format!("/status?service={service}")).await;
    let prod = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == "prod")
        .unwrap_or_else(|| panic!("prod is not listed: {status:#}"));
    assert_eq!(
        (prod["release"].clone(), prod["health"].as_str()),
        (serde_json::Value::Null, Some("empty"))
    );
}

#[tokio::test]
async fn what_init_writes_for_python_builds_tests_deploys_and_answers() {
    init_runs_end_to_end(
        "blog-repo",
        &[
            ("pyproject.toml", "[project]\nname = \"tiny-blog\"\nversion = \"0.1.0\"\n"),
            ("requirements.txt", "# no third-party packages\n"),
            (
                "app.py",
                "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\ndef greeting():\n    return b'hello'\n\nclass H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n        self.end_headers()\n        self.wfile.write(greeting())\n\nif __name__ == '__main__':\n    HTTPServer((os.environ.get('HOST', '127.0.0.1'), int(os.environ['PORT'])), H).serve_forever()\n",
            ),
            (
                "tests/test_app.py",
                "import unittest\nimport app\n\nclass T(unittest.TestCase):\n    def test_greets(self):\n        self.assertEqual(app.greeting(), b'hello')\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn what_init_writes_for_node_builds_tests_deploys_and_answers() {
    init_runs_end_to_end(
        "shop-repo",
        &[
            (
                "package.json",
                r#"{"name": "@acme/tiny-shop", "version": "1.0.0", "main": "index.js", "scripts": {"test": "node --test", "start": "node index.js"}}"#,
            ),
            (
                "package-lock.json",
                r#"{"name": "@acme/tiny-shop", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "@acme/tiny-shop", "version": "1.0.0"}}}"#,
            ),
            (
                "index.js",
                "const http = require('http');\nconst greet = () => 'hello';\nmodule.exports = { greet };\nif (require.main === module) {\n  http.createServer((req, res) => res.end(greet())).listen(Number(process.env.PORT), process.env.HOST);\n}\n",
            ),
            (
                "test/greet.test.js",
                "const test = require('node:test');\nconst assert = require('node:assert');\nconst { greet } = require('../index.js');\ntest('greets', () => assert.strictEqual(greet(), 'hello'));\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn what_init_writes_for_rust_builds_tests_deploys_and_answers() {
    // Steps find the toolchain where this test's cargo found it: the
    // server's own user's (`--isolation none`), as a single-user machine has.
    init_runs_end_to_end_with(
        "api-repo",
        &[
            ("Cargo.toml", "[package]\nname = \"tiny-api\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
            ("Cargo.lock", "version = 4\n\n[[package]]\nname = \"tiny-api\"\nversion = \"0.1.0\"\n"),
            (
                "src/main.rs",
                "use std::io::{Read, Write};\n\nfn greet() -> &'static str {\n    \"hello\"\n}\n\nfn main() {\n    let host = std::env::var(\"HOST\").unwrap_or_else(|_| \"127.0.0.1\".into());\n    let port = std::env::var(\"PORT\").unwrap();\n    let listener = std::net::TcpListener::bind(format!(\"{host}:{port}\")).unwrap();\n    for stream in listener.incoming() {\n        let mut stream = stream.unwrap();\n        let mut buf = [0u8; 4096];\n        let _ = stream.read(&mut buf);\n        let body = greet();\n        let _ = write!(stream, \"HTTP/1.1 200 OK\\r\\nContent-Length: {}\\r\\nConnection: close\\r\\n\\r\\n{body}\", body.len());\n    }\n}\n\n#[test]\nfn greets() {\n    assert_eq!(greet(), \"hello\");\n}\n",
            ),
        ],
        &["--isolation", "none"],
    )
    .await;
}

#[tokio::test]
async fn what_init_writes_for_go_builds_tests_deploys_and_answers() {
    if Command::new("go").arg("version").output().is_err() {
        panic!("go is needed for this test: .ci/run installs Debian's golang-go");
    }
    init_runs_end_to_end(
        "go-repo",
        &[
            ("go.mod", "module example.com/acme/tiny-go\n\ngo 1.19\n"),
            (
                "main.go",
                "package main\n\nimport (\n\t\"net/http\"\n\t\"os\"\n)\n\nfunc greet() string { return \"hello\" }\n\nfunc main() {\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(greet())) })\n\thttp.ListenAndServe(os.Getenv(\"HOST\")+\":\"+os.Getenv(\"PORT\"), nil)\n}\n",
            ),
            (
                "main_test.go",
                "package main\n\nimport \"testing\"\n\nfunc TestGreet(t *testing.T) {\n\tif greet() != \"hello\" {\n\t\tt.Fatal(greet())\n\t}\n}\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn what_init_writes_for_a_makefile_builds_tests_deploys_and_answers() {
    init_runs_end_to_end(
        "make-repo",
        &[
            ("Makefile", "all:\n\t@echo nothing to build\n\ntest:\n\tpython3 -m unittest -q\n\nrun:\n\texec python3 server.py\n"),
            (
                "server.py",
                "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\ndef greeting():\n    return b'hello'\n\nclass H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n        self.end_headers()\n        self.wfile.write(greeting())\n\nif __name__ == '__main__':\n    HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n",
            ),
            ("test_server.py", "import unittest\nimport server\n\nclass T(unittest.TestCase):\n    def test_greets(self):\n        self.assertEqual(server.greeting(), b'hello')\n"),
        ],
    )
    .await;
}
