"""The readers people run against our formats, started for real on loopback.

* :class:`LocalPrometheus` — Debian's ``prometheus`` binary with its own
  config and data directory and ``serverset_sd_configs`` / ``nerve_sd_configs``
  pointed at the paths given; :meth:`LocalPrometheus.targets` is what its
  ``/api/v1/targets`` lists.
* :class:`CuratorReader` — Apache Curator's own x-discovery
  ``ServiceDiscovery`` (Debian's ``libcurator-discovery-java``) in a small Java
  program compiled on first use: ``queryForNames``, ``queryForInstances`` and
  a ``ServiceProvider`` per name, answered as JSON on request.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

from .sandbox import die_with_parent, free_port, wait_until

PROMETHEUS = "/usr/bin/prometheus"


class LocalPrometheus:
    """A Prometheus server on 127.0.0.1 discovering targets in ZooKeeper.

    ``sd_configs`` maps a job name to ``(kind, paths)`` with kind
    ``serverset`` or ``nerve``.  Nothing listens at the discovered endpoints:
    the targets are listed (and scraped in vain) all the same.
    """

    def __init__(self, workdir: Path, zookeeper_hosts: str,
                 sd_configs: dict[str, tuple[str, list[str]]]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        servers = zookeeper_hosts.split("/", 1)[0].split(",")
        jobs = []
        for job, (kind, paths) in sd_configs.items():
            jobs.append({"job_name": job, f"{kind}_sd_configs": [
                {"servers": servers, "paths": list(paths), "timeout": "10s"}]})
        # JSON is YAML: no YAML writer needed.
        self.config = self.workdir / "prometheus.yml"
        self.config.write_text(json.dumps({"global": {"scrape_interval": "1m"},
                                           "scrape_configs": jobs}, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalPrometheus:
        if not Path(PROMETHEUS).exists():
            raise RuntimeError(f"{PROMETHEUS} missing: apt-get install prometheus")
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited; see {self.workdir}/prometheus.log")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    return answer.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        wait_until(ready, timeout, interval=0.1, what="prometheus ready")
        return self

    def active_targets(self) -> list[dict]:
        """``/api/v1/targets``' active targets, as Prometheus returns them."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active",
                                    timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["activeTargets"]

    def targets(self, job: str) -> dict[str, dict[str, str]]:
        """``job``'s active targets: address → the labels discovery gave it."""
        return {target["discoveredLabels"]["__address__"]: target["discoveredLabels"]
                for target in self.active_targets() if target["scrapePool"] == job}

    def log_text(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


CURATOR_CLASSPATH = ":".join([
    "/usr/share/java/curator-x-discovery.jar",  # its manifest names curator, guava, jackson
    # ServiceProvider's cache; Debian's discovery package does not depend on it.
    "/usr/share/java/curator-recipes.jar",
    "/usr/share/java/jackson-core.jar",
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/slf4j-nop.jar",  # Curator's and ZooKeeper's logging stays off stdout
])

# One request a line on stdin ("read"), one JSON answer a line on stdout:
# {"names": [...], "instances": {name: [...]}, "provider": {name: [...]}}.
CURATOR_READER_JAVA = textwrap.dedent("""\
    import com.fasterxml.jackson.databind.ObjectMapper;
    import java.io.BufferedReader;
    import java.io.InputStreamReader;
    import java.util.*;
    import java.util.concurrent.TimeUnit;
    import org.apache.curator.framework.CuratorFramework;
    import org.apache.curator.framework.CuratorFrameworkFactory;
    import org.apache.curator.retry.RetryOneTime;
    import org.apache.curator.x.discovery.*;

    public class CuratorReader {
        static Map<String, Object> describe(ServiceInstance<Map> instance) {
            Map<String, Object> out = new TreeMap<>();
            out.put("name", instance.getName());
            out.put("id", instance.getId());
            out.put("address", instance.getAddress());
            out.put("port", instance.getPort());
            out.put("payload", instance.getPayload());
            out.put("serviceType", String.valueOf(instance.getServiceType()));
            out.put("enabled", instance.isEnabled());
            out.put("registrationTimeUTC", instance.getRegistrationTimeUTC());
            return out;
        }

        public static void main(String[] args) throws Exception {
            CuratorFramework client = CuratorFrameworkFactory.newClient(args[0],
                    new RetryOneTime(200));
            client.start();
            if (!client.blockUntilConnected(60, TimeUnit.SECONDS)) {
                throw new IllegalStateException("no connection to " + args[0]);
            }
            ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                    .client(client).basePath(args[1]).build();
            discovery.start();
            Map<String, ServiceProvider<Map>> providers = new HashMap<>();
            ObjectMapper json = new ObjectMapper();
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            String line;
            while ((line = in.readLine()) != null) {
                Map<String, Object> answer = new TreeMap<>();
                try {
                    List<String> names = new ArrayList<>(discovery.queryForNames());
                    Collections.sort(names);
                    Map<String, Object> instances = new TreeMap<>();
                    Map<String, Object> provided = new TreeMap<>();
                    for (String name : names) {
                        List<Object> found = new ArrayList<>();
                        for (ServiceInstance<Map> each : discovery.queryForInstances(name)) {
                            found.add(describe(each));
                        }
                        instances.put(name, found);
                        ServiceProvider<Map> provider = providers.get(name);
                        if (provider == null) {
                            provider = discovery.serviceProviderBuilder().serviceName(name)
                                    .build();
                            provider.start();
                            providers.put(name, provider);
                        }
                        List<Object> all = new ArrayList<>();
                        for (ServiceInstance<Map> each : provider.getAllInstances()) {
                            all.add(describe(each));
                        }
                        provided.put(name, all);
                    }
                    answer.put("names", names);
                    answer.put("instances", instances);
                    answer.put("provider", provided);
                } catch (Exception exc) {
                    answer.put("error", exc.toString());
                }
                System.out.println(json.writeValueAsString(answer));
                System.out.flush();
            }
        }
    }
    """)


class CuratorReader:
    """Curator's ServiceDiscovery under ``base_path``, in a JVM of its own."""

    def __init__(self, workdir: Path, zookeeper_hosts: str, base_path: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts, self.base_path = zookeeper_hosts, base_path
        self.process: subprocess.Popen | None = None

    def compile(self) -> None:
        source = self.workdir / "CuratorReader.java"
        source.write_text(CURATOR_READER_JAVA)
        javac = shutil.which("javac")
        if javac is None:
            raise RuntimeError("javac missing: apt-get install openjdk-17-jdk-headless")
        result = subprocess.run([javac, "-nowarn", "-cp", CURATOR_CLASSPATH, "-d",
                                 str(self.workdir), str(source)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode:
            raise RuntimeError(f"javac failed:\n{result.stdout}{result.stderr}")

    def start(self) -> CuratorReader:
        self.compile()
        with open(self.workdir / "curator-reader.stderr", "ab") as stderr:
            self.process = subprocess.Popen(
                ["java", "-cp", f"{CURATOR_CLASSPATH}:{self.workdir}", "CuratorReader",
                 self.hosts, self.base_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        return self

    def read(self) -> dict:
        """What Curator sees now: names, each name's instances, and its provider's."""
        self.process.stdin.write("read\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            stderr = (self.workdir / "curator-reader.stderr").read_text(errors="replace")
            raise RuntimeError(f"the Curator reader exited: {stderr}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"Curator: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
