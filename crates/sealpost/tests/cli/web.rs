//! `sealpost web` in a real browser: Debian's Chromium driven by Playwright (`.ci/run` installs
//! both), two people in two browser sessions against a real server. The script is
//! `tests/web/two_browsers.cjs`; it leaves its screenshots in `target/screenshots/web-*.png`.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{InProcessServer, register_all, sealpost};

/// Where playwright-core is installed (`$SEALPOST_PLAYWRIGHT`, or `target/web-test`, where
/// `.ci/run` puts it), if it is, with Chromium and Node.js there too.
fn playwright() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("SEALPOST_PLAYWRIGHT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/web-test/node_modules/playwright-core"));
    let node = Command::new("node").arg("--version").output().is_ok();
    if !dir.is_dir() || !Path::new("/usr/bin/chromium").exists() || !node {
        eprintln!(
            "skipping: the browser test needs Node.js, /usr/bin/chromium (apt-get install \
             chromium) and playwright-core (npm install --prefix target/web-test playwright-core)"
        );
        return None;
    }
    Some(dir)
}

/// A running `sealpost web`, and the address it printed.
struct WebApp {
    child: Child,
    url: String,
}

impl WebApp {
    fn start(home: &Path) -> WebApp {
        let mut child = sealpost()
            .arg("--home")
            .arg(home)
            .arg("web")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .map(|l| l.unwrap())
            .find_map(|l| l.trim().contains("?token=").then(|| l.trim().to_owned()))
            .unwrap();
        WebApp { child, url }
    }
}

impl Drop for WebApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that shows redirects instead of following them (as the login answers one).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn two_browsers_chat_through_the_web_app() {
    let Some(playwright) = playwright() else {
        return;
    };
    let server = InProcessServer::start();
    let homes = tempfile::tempdir().unwrap();
    let [a, b, _carol] = register_all(&server.url, homes.path(), ["alice", "bob", "carol"]);
    server.list_rogue_device("carol", 0xc0);
    let file = homes.path().join("route for saturday.txt");
    std::fs::write(&file, "meet at ten\nbring boots\n".repeat(1000)).unwrap();
    let (alice, bob) = (WebApp::start(&a), WebApp::start(&b));
    let shots = std::env::var_os("SEALPOST_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/two_browsers.cjs");
    let status = Command::new("node")
        .arg(script)
        .arg(&playwright)
        .args([&alice.url, &bob.url])
        .arg(&shots)
        .arg(&file)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the browser test failed (its output is above)"
    );
}

/// What the web app lets through, request by request, without a browser: only its own
/// loopback host, its own origin, the printed token once and then the cookie; never a path on
/// this computer; and always its security headers.
#[test]
fn the_web_app_answers_its_own_page_only() {
    let server = InProcessServer::start();
    let homes = tempfile::tempdir().unwrap();
    let [home] = register_all(&server.url, homes.path(), ["alice"]);
    let app = WebApp::start(&home);
    let origin = app.url.split("/?").next().unwrap().to_owned();
    server.runtime.block_on(async {
        let http = client();
        let csp = |r: &reqwest::Response| {
            r.headers()
                .get("content-security-policy")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };

        // A page from a DNS-rebinding host name, and a request from another origin: refused.
        let rebound = http
            .get(&app.url)
            .header("Host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 421);
        let elsewhere = http
            .get(&app.url)
            .header("Origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 403);

        // The token, once: a cookie, and off to the page.
        let first = http.get(&app.url).send().await.unwrap();
        assert_eq!(first.status(), 303);
        assert!(
            csp(&first).contains("default-src 'none'"),
            "{}",
            csp(&first)
        );
        let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_owned();
        assert_eq!(http.get(&app.url).send().await.unwrap().status(), 401);
        let page = http
            .get(format!("{origin}/"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["cache-control"], "no-store");
        assert!(page.text().await.unwrap().contains("/app.js"));

        let call =
            async |body: serde_json::Value, origin_header: Option<&str>, cookie: Option<&str>| {
                let mut request = http.post(format!("{origin}/api/rpc")).json(&body);
                if let Some(o) = origin_header {
                    request = request.header("Origin", o);
                }
                if let Some(c) = cookie {
                    request = request.header("Cookie", c);
                }
                let answer = request.send().await.unwrap();
                let status = answer.status().as_u16();
                (
                    status,
                    answer.json::<serde_json::Value>().await.unwrap_or_default(),
                )
            };
        // What another page on this machine embeds (same site: the cookie goes along) is
        // refused by what the browser says of it.
        let embedded = http
            .get(format!("{origin}/api/qr?text=123"))
            .header("Cookie", &cookie)
            .header("Sec-Fetch-Site", "same-site")
            .send()
            .await
            .unwrap();
        assert_eq!(embedded.status(), 403);
        let own = http
            .get(format!("{origin}/api/qr?text=123"))
            .header("Cookie", &cookie)
            .header("Sec-Fetch-Site", "same-origin")
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 200);
        assert_eq!(own.headers()["content-type"], "image/svg+xml");

        let whoami = serde_json::json!({"method": "whoami"});
        assert_eq!(call(whoami.clone(), Some(&origin), None).await.0, 401);
        assert_eq!(
            call(whoami.clone(), None, Some(&cookie)).await.0,
            403,
            "a call without an Origin"
        );
        let (_, me) = call(whoami, Some(&origin), Some(&cookie)).await;
        assert_eq!(me["result"]["username"], "@alice");

        // A page cannot make the client send, save or show a file by its path.
        for (method, params) in [
            (
                "send",
                serde_json::json!({"to": "@alice", "file": "/etc/passwd"}),
            ),
            (
                "profile",
                serde_json::json!({"name": "x", "avatar": "/etc/passwd"}),
            ),
            ("download", serde_json::json!({"message": "0011"})),
        ] {
            let body = serde_json::json!({"method": method, "params": params});
            let (_, answer) = call(body, Some(&origin), Some(&cookie)).await;
            let error = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(error.contains("/api/upload"), "{answer}");
        }

        // An upload's name is a name, not a path.
        let upload = http
            .post(format!(
                "{origin}/api/upload?to=%40alice&name=..%2F..%2Fstore.key"
            ))
            .header("Origin", &origin)
            .header("Cookie", &cookie)
            .body("x")
            .send()
            .await
            .unwrap();
        let answer: serde_json::Value = upload.json().await.unwrap();
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no path")),
            "{answer}"
        );
    });
}

/// Ctrl-C (or SIGTERM) stops the web app even while a page listens to its event stream: the
/// graceful shutdown used to wait for that stream forever.
#[test]
fn the_web_app_stops_while_a_page_listens() {
    let server = InProcessServer::start();
    let homes = tempfile::tempdir().unwrap();
    let [home] = register_all(&server.url, homes.path(), ["alice"]);
    let mut app = WebApp::start(&home);
    let origin = app.url.split("/?").next().unwrap().to_owned();
    // The page's stream stays open (held here) while the process is told to stop.
    let _listening = server.runtime.block_on(async {
        let http = client();
        let login = http.get(&app.url).send().await.unwrap();
        let cookie = login.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let mut events = http
            .get(format!("{origin}/api/events"))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 200);
        // The stream is open: its first event is there.
        assert!(events.chunk().await.unwrap().is_some());
        let pid = app.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        events
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = app.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the web app did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
