"""The end-to-end demo: ``make demo`` (``python -m centops.tools.demo``).

Runs the whole product on one machine, every part real and on loopback:

1. a local Sigstore, a token-checking git server, an OCI registry, a Docker
   Engine and a download server start; the manifest repository is built from
   ``manifests/`` with real images pushed to the registry (one runs as a
   container), a script and a policy file;
2. the release is made with ``centops release`` and signed with
   ``centops sign``, then pushed;
3. three clients on two channels run ``centops-agent sync`` and report to the
   results branch;
4. serial+1 is released to ``canary``; the clients poll again;
5. one client is served a tampered manifest and one an older signed manifest:
   both are refused and nothing changes there;
6. ``centops fleet status`` prints the fleet and writes the HTML report.

Every process started here is stopped by PID at the end; every file stays in
the one output folder named at the start and the end. The local Sigstore's
trust root is used only because the demo configures it explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from centops.tools.stack.clients import ISSUER, SIGNER, loopback_agent_config

TOKEN_ENV = "CENTOPS_DEMO_TOKEN"  # noqa: S105 - a variable name
BOOTSTRAP = b"""#!/bin/sh
# Prepares a client for the telemetry agent; idempotent.
set -eu
mkdir -p "$CENTOPS_FILES_ROOT"
echo "bootstrap $CENTOPS_VERSION for serial $CENTOPS_SERIAL" \\
  > "$CENTOPS_FILES_ROOT/bootstrap.done"
echo "bootstrap $CENTOPS_VERSION done"
"""
POLICY = b"""# default delivery policy
retention_days: 30
sample_rate: "0.25"
"""
CLIENTS = (("client-1", "stable"), ("client-2", "stable"), ("client-3", "canary"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")
    sys.stdout.flush()


class Demo:
    def __init__(self, out: Path, repo_root: Path) -> None:
        self.out = out
        self.repo_root = repo_root
        self.bin = Path(sys.executable).parent
        self.env = dict(os.environ)
        self.env[TOKEN_ENV] = os.urandom(16).hex()
        self.env["NO_PROXY"] = "127.0.0.1,localhost"
        self.env["CENTOPS_AGENT_CACHE_DIR"] = str(out / "agent-cache")
        self.env.setdefault("COLUMNS", "120")

    # -- commands, run as a person would -----------------------------------------

    def run(
        self, argv: Sequence[str], *, check: bool = True, cwd: Path | None = None
    ) -> int:
        shown = " ".join(
            Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)
        )
        print(f"$ {shown}")
        sys.stdout.flush()
        done = subprocess.run(
            list(argv), env=self.env, cwd=cwd or self.work, timeout=600, check=False
        )
        if check and done.returncode != 0:
            raise SystemExit(f"demo: `{shown}` exited with {done.returncode}")
        return done.returncode

    def centops(self, *args: str, check: bool = True) -> int:
        return self.run([str(self.bin / "centops"), *args], check=check)

    def agent(self, client: str, *args: str) -> int:
        config = self.out / "clients" / client / "agent.yaml"
        return self.run(
            [str(self.bin / "centops-agent"), *args, "--config", str(config)],
            check=False,
        )

    # -- the steps ----------------------------------------------------------------

    def main(self) -> None:
        from centops.tools.localsigstore import LocalSigstore
        from centops.tools.stack import build_app, start_stack, stop_stack
        from centops.tools.stack.gitserver import SmartHttpGitServer

        self.out.mkdir(parents=True, exist_ok=True)
        print(f"demo folder: {self.out}")
        with contextlib.ExitStack() as stack:
            say("starting a local Sigstore, git server, registry, Docker Engine")
            sigstore = stack.enter_context(LocalSigstore.create(self.out / "sigstore"))
            containers = start_stack(self.out / "stack")
            stack.callback(stop_stack, containers)
            stack.callback(self.remove_demo_containers, containers.daemon.docker_host)
            (self.out / "git").mkdir(exist_ok=True)
            git = stack.enter_context(
                SmartHttpGitServer(self.out / "git", token=self.env[TOKEN_ENV])
            )
            www = stack.enter_context(_FileServer(self.out / "www"))
            binary = build_app(self.out / "build")
            self.sigstore, self.containers, self.www = sigstore, containers, www
            self.binary = binary
            print(f"  git      {git.url}  (token required)")
            print(f"  registry {containers.registry.url}")
            print(f"  engine   {containers.daemon.docker_host}")
            print(f"  sigstore {sigstore.url}")

            self.build_repository(git.url)
            self.first_release()
            self.make_clients(git.url)

            say("3. three clients sync (two on stable, one on canary)")
            for client, _ in CLIENTS:
                self.agent(client, "sync")

            say("4. serial+1 on canary; every client polls again")
            self.release_canary_update()
            for client, _ in CLIENTS:
                self.agent(client, "sync")

            say("5. a tampered manifest and an older signed manifest are refused")
            self.serve_bad_manifests(git.url)
            self.agent("client-1", "sync")
            self.agent("client-3", "sync")
            for client in ("client-1", "client-3"):
                self.agent(client, "status")

            say("6. the fleet view from the results branch")
            results = str(self.out / "git" / "fleet.git")
            self.centops("fleet", "status", "--repo", results)
            report = self.out / "fleet.html"
            self.centops(
                "fleet",
                "status",
                "--repo",
                results,
                "--format",
                "html",
                "--output",
                str(report),
            )
            print(f"HTML fleet report: {report}")
            say("stopping everything the demo started")
        print(f"\ndemo finished; everything it wrote is in {self.out}")

    def build_repository(self, git_url: str) -> None:
        from centops.tools.stack.gitserver import WorkRepo, init_bare

        say("1. building the manifest repository from manifests/")
        bare = init_bare(self.out / "git" / "fleet.git")
        self.repo = WorkRepo.clone(bare, self.out / "work")
        self.work = self.repo.path
        shutil.copytree(self.repo_root / "manifests", self.work / "manifests")
        self.repo.git("add", "-A")
        self.repo.git("commit", "--quiet", "--allow-empty", "-m", "Import manifests")
        self.repo.push("main")
        self.git_url = f"{git_url}/fleet.git"

    def push_images(self, version: str) -> dict[str, str]:
        from centops.tools.stack import AppKind, push_app, push_app_index

        url = self.containers.registry.url
        host = self.containers.registry.host
        push_app(
            url,
            "centops/telemetry",
            f"v{version}",
            binary=self.binary.read_bytes(),
            kind=AppKind.HEALTHY,
            version=version,
        )
        push_app_index(url, "centops/runner", "v1.9.3", binary=self.binary.read_bytes())
        return {
            "telemetry": f"{host}/centops/telemetry:v{version}",
            "runner": f"{host}/centops/runner:v1.9.3",
        }

    def release(self, channel: str, component: str, version: str, *source: str) -> None:
        self.centops(
            "release",
            "--channel",
            channel,
            "--component",
            component,
            "--version",
            version,
            *source,
            "--insecure-allow-http-loopback",
        )

    def sign_and_push(self, message: str, *channels: str) -> None:
        self.env["SIGSTORE_IDENTITY_TOKEN"] = self.sigstore.identity_token(
            san=SIGNER, issuer=ISSUER
        )
        files = [f"manifests/{c}/manifest.yaml" for c in channels]
        self.centops(
            "sign",
            "--trust-config",
            str(self.sigstore.trust_config_path),
            "--insecure-allow-http-loopback",
            *files,
        )
        del self.env["SIGSTORE_IDENTITY_TOKEN"]
        self.centops(
            "verify",
            files[0],
            "--trusted-root",
            str(self.sigstore.trusted_root_path),
            "--identity",
            SIGNER,
            "--issuer",
            ISSUER,
        )
        self.repo.git("add", "-A")
        self.repo.git("commit", "--quiet", "-m", message)
        self.repo.push("main")

    def first_release(self) -> None:
        say("2. releasing with `centops release`, signing with `centops sign`")
        telemetry = {"stable": "2.3.1", "canary": "2.3.2"}
        images = {c: self.push_images(v) for c, v in telemetry.items()}
        self.www.add("bootstrap-1.0.sh", BOOTSTRAP)
        self.www.add("policy-3.yaml", POLICY)
        for channel, version in telemetry.items():
            found = images[channel]
            self.release(
                channel, "telemetry-agent", f"v{version}", "--image", found["telemetry"]
            )
            self.release(
                channel, "pipeline-runner", "v1.9.3", "--image", found["runner"]
            )
            self.release(
                channel,
                "bootstrap",
                "1.0",
                "--script-url",
                f"{self.www.url}/bootstrap-1.0.sh",
                "--depends-on",
                "telemetry-agent",
            )
            self.release(
                channel,
                "default-policy",
                "3",
                "--file-url",
                f"{self.www.url}/policy-3.yaml",
                "--path",
                "policies/default.yaml",
            )
        self.run(["git", "--no-pager", "diff", "--stat"])
        self.centops("validate", "--insecure-allow-http-loopback")
        self.sign_and_push(
            "Release telemetry-agent and pipeline-runner", "stable", "canary"
        )

    def release_canary_update(self) -> None:
        images = self.push_images("2.4.0")
        self.release(
            "canary", "telemetry-agent", "v2.4.0", "--image", images["telemetry"]
        )
        self.sign_and_push("Canary: telemetry-agent v2.4.0", "canary")

    def make_clients(self, git_url: str) -> None:
        for client, channel in CLIENTS:
            root = self.out / "clients" / client
            root.mkdir(parents=True, exist_ok=True)
            config = loopback_agent_config(
                root,
                repo_url=self.git_url,
                trusted_root=self.sigstore.trusted_root_path,
                token_variable=TOKEN_ENV,
                client_id=client,
                channel=channel,
                docker={
                    "host": self.containers.daemon.docker_host,
                    "allowed_registries": [self.containers.registry.host],
                    "containers": {
                        "telemetry-agent": {
                            "name": f"demo-{client}-telemetry",
                            "network": "none",
                            "health_timeout_seconds": 30,
                        }
                    },
                },
                # Reports go to the real repository even while a client is
                # pointed at a hostile mirror in step 5.
                telemetry={
                    "results_branch": {"url": self.git_url, "max_attempts": 8},
                },
                poll={"frequency_seconds": 60, "jitter_seconds": 5},
            )
            (root / "agent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def serve_bad_manifests(self, git_url: str) -> None:
        """client-1 gets a tampered copy, client-3 the older signed canary."""
        from centops.tools.stack.gitserver import WorkRepo, init_bare

        tampered = WorkRepo.clone(
            init_bare(self.out / "git" / "tampered.git"), self.out / "work-tampered"
        )
        path = "manifests/stable/manifest.yaml"
        source = (self.work / path).read_bytes()
        shutil.copytree(self.work / "manifests", tampered.path / "manifests")
        tampered.git("add", "-A")
        changed = source.replace(b"version: v1.9.3", b"version: v1.9.4", 1)
        tampered.commit_files({path: changed}, "tampered after signing")
        tampered.push("main")
        print(
            "client-1 now follows a mirror whose stable manifest was edited after "
            "signing"
        )

        older = WorkRepo.clone(
            init_bare(self.out / "git" / "older.git"), self.out / "work-older"
        )
        first_release = self.repo.git("rev-list", "--max-count=1", "HEAD~1").strip()
        for name in ("manifest.yaml", "manifest.yaml.sigstore.json"):
            rel = f"manifests/canary/{name}"
            blob = subprocess.run(
                ["git", "show", f"{first_release}:{rel}"],
                cwd=self.work,
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout
            older.commit_files({rel: blob}, "the previous, validly signed canary")
        older.push("main")
        print("client-3 now follows a mirror serving the older signed canary manifest")
        for client, repo in (("client-1", "tampered.git"), ("client-3", "older.git")):
            config_path = self.out / "clients" / client / "agent.yaml"
            config = yaml.safe_load(config_path.read_text())
            config["repository"]["url"] = f"{git_url}/{repo}"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @staticmethod
    def remove_demo_containers(docker_host: str) -> None:
        with contextlib.suppress(Exception):
            import docker

            client = docker.DockerClient(base_url=docker_host, version="auto")
            for container in client.containers.list(all=True):
                if container.name.startswith("demo-"):
                    container.remove(force=True)
            client.close()


class _FileServer:
    """Serves a folder of scripts and files on 127.0.0.1 (the demo's CDN)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        handler = _quiet_handler(root)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, body: bytes) -> None:
        (self.root / name).write_bytes(body)

    def __enter__(self) -> _FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _quiet_handler(root: Path) -> Any:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def _timer() -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"(demo took {time.monotonic() - started:.1f} s)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, help="output folder (default demo-out/TIME)"
    )
    args = parser.parse_args(argv)
    repo_root = Path.cwd()
    if not (repo_root / "manifests").is_dir():
        raise SystemExit("demo: run it from the repository (no manifests/ here)")
    out = args.dir or Path("demo-out") / time.strftime("%Y%m%d-%H%M%S")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds every `with`: all servers stop

    signal.signal(signal.SIGTERM, interrupted)
    try:
        with _timer():
            Demo(out.resolve(), repo_root).main()
    except KeyboardInterrupt:
        raise SystemExit(
            f"\ndemo interrupted; everything it started is stopped; files in {out}"
        ) from None


if __name__ == "__main__":
    main()
