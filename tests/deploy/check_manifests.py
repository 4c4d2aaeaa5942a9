#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests against the binaries they run.

For every overlay's `kubectl kustomize` output:
  * every flag a container passes to shardserve-router / shardserve-worker is one the binary's
    --help lists, every REQUIRED flag is set, and every $(VAR) in the arguments resolves from the
    ConfigMap or the pod's own env;
  * the native gRPC startup/readiness/liveness probes use an integer port equal to the port the
    container's --listen flag binds, and every port a listen flag binds is a containerPort;
  * the router's --workers addresses point at ports that worker containers listen on, and their
    count is --stages x --replicas;
  * drain timing: a preStop sleep, and terminationGracePeriodSeconds covering that sleep plus the
    binary's shutdown deadline (plus any drain flag the binary grows);
  * Services, PodDisruptionBudgets and the HPA select or name objects that exist, with named
    ports the pods define; the HPA's metric is one the router binary exports;
  * the cluster credential: every router and worker container passes --cluster-secret-file (and
    not --insecure-cluster) naming a file inside a read-only mount of a non-optional volume of the
    Secret shardserve-cluster-secret, key `secret`; no rendered Secret carries a value (the
    credential is created in the cluster, never kept in git);
  * every worker container confines LoadShard with --model-root inside one of its volumeMounts,
    and every router's --model lies inside the model roots of the workers;
  * the public API key: every router container reads --api-key from $SHARDSERVE_API_KEY, filled
    from the Secret shardserve-api-key (key `api-key`, not optional), never from a literal in
    the manifests, and the router's --help says it reads that variable;
  * the model: every router and worker pod waits in an init container for $(MODEL)/config.json
    on the model volume it mounts read-only; a model-loader Job, where rendered, runs
    load-model.sh with the same MODEL, writes the same claim (ReadWriteMany, mounted writable at
    a folder holding MODEL) and is the only writer; no other pod mounts the claim writable;
  * Ingress: TLS for every host, routes only to the router Service's HTTP port, and only /v1
    (never /metrics or the whole site);
  * NetworkPolicy: some policy isolates every worker pod for ingress; the worker's --listen port
    admits only pods selected by a non-empty podSelector of this namespace that matches router or
    worker pods (no open rule, ipBlock, namespaceSelector or empty podSelector), and admits the
    routers and workers themselves; its --metrics-listen port is admitted from somewhere; a router
    pod that a policy isolates keeps its --listen and --http-listen ports open to every source.
With --typescript DIR it also writes one .ts file per overlay that assigns every object to its
kubernetes-types type, for `tsc --noEmit` (misspelt or misplaced fields fail there).
With --self-test it breaks the rendered cpu, cpu-statefulset and gpu-production overlays in known
ways and checks that each is caught.
"""

import argparse
import copy
import json
import pathlib
import re
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
BINARIES = ("shardserve-router", "shardserve-worker")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
LISTEN_FLAGS = ("--listen", "--http-listen", "--metrics-listen")
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
RUNTIME = object()  # a value known only in the running pod (fieldRef)
# The cluster credential: a Secret created in the namespace, not rendered (docs/DEPLOY.md).
CLUSTER_SECRET = "shardserve-cluster-secret"
CLUSTER_SECRET_KEY = "secret"
# The public API key: a Secret created in the namespace, read by the router from this variable.
API_KEY_SECRET = "shardserve-api-key"
API_KEY_SECRET_KEY = "api-key"
API_KEY_ENV = "SHARDSERVE_API_KEY"
MODEL_CLAIM = "shardserve-models"
MODEL_LOADER_JOB = "shardserve-model-loader"
# Paths an Ingress may route to the router's HTTP port: the OpenAI API only (a /v1 prefix would
# also publish /v1/cluster, the operators' view of the workers).
INGRESS_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")

TS_TYPES = {
    ("v1", "ConfigMap"): ("kubernetes-types/core/v1", "ConfigMap"),
    ("v1", "Service"): ("kubernetes-types/core/v1", "Service"),
    ("v1", "PersistentVolumeClaim"): ("kubernetes-types/core/v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"): ("kubernetes-types/apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"): ("kubernetes-types/apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"): ("kubernetes-types/policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"):
        ("kubernetes-types/autoscaling/v2", "HorizontalPodAutoscaler"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): ("./leaderworkerset", "LeaderWorkerSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("kubernetes-types/networking/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"): ("kubernetes-types/networking/v1", "Ingress"),
    ("batch/v1", "Job"): ("kubernetes-types/batch/v1", "Job"),
}


class Binary:
    """What a binary accepts, from its --help, plus facts its source states."""

    def __init__(self, name, help_text, shutdown_s, binary_bytes):
        self.name = name
        self.flags = {}  # --flag -> default string or None
        self.required = set()
        self.env = {}  # --flag -> the environment variable CLI11 reads it from
        for line in help_text.splitlines():
            m = re.match(r"^\s+(?:-\w,)?(--[a-z0-9][a-z0-9-]*)(\s.*)?$", line)
            if not m:
                continue
            rest = m.group(2) or ""
            default = re.search(r"=(\S+)", rest)
            self.flags[m.group(1)] = default.group(1) if default else None
            if "REQUIRED" in rest:
                self.required.add(m.group(1))
            env = re.search(r"\(Env:([A-Za-z0-9_]+)\)", rest)
            if env:
                self.env[m.group(1)] = env.group(1)
        self.shutdown_s = shutdown_s
        self.binary_bytes = binary_bytes

    def drain_flags(self):
        return [f for f in self.flags if re.match(r"--(drain|shutdown|grace)[a-z-]*-s$", f)]


def load_binaries(build_dir):
    binaries = {}
    for name in BINARIES:
        path = pathlib.Path(build_dir) / "bin" / name
        if not path.exists():
            sys.exit(f"check_manifests: {path} not found; build it first")
        out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            sys.exit(f"check_manifests: {path} --help exited {out.returncode}")
        # The process class owns the drain (router/router.cc, worker/worker.cc).
        source = REPO / ("router/router.cc" if name.endswith("router") else "worker/worker.cc")
        m = re.search(r"Shutdown\([^;]*?seconds\((\d+)\)", source.read_text(), re.S)
        if not m:
            sys.exit(f"check_manifests: no Shutdown(... seconds(N)) deadline in {source}; "
                     "update the drain check to the binary's new shutdown path")
        binaries[name] = Binary(name, out.stdout, int(m.group(1)), path.read_bytes())
    return binaries


def pod_templates(obj):
    """(label for messages, pod template, extra labels the controller adds)."""
    kind, name = obj.get("kind"), obj["metadata"]["name"]
    spec = obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet"):
        yield f"{kind}/{name}", spec.get("template", {}), {}
    elif kind == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate", {})
        extra = {LWS_NAME_LABEL: name}
        if "leaderTemplate" in lwt:
            yield f"{kind}/{name} leader", lwt["leaderTemplate"], extra
        yield f"{kind}/{name} worker", lwt.get("workerTemplate", {}), extra


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector, labels):
    """A metav1.LabelSelector (matchLabels, matchExpressions); {} matches everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def template_labels(template, extra):
    return {**template.get("metadata", {}).get("labels", {}), **extra}


def isolates_ingress(policy):
    types = policy["spec"].get("policyTypes")
    return types is None or "Ingress" in types


def rule_covers(rule, port, port_name):
    """Whether a NetworkPolicy ingress rule applies to TCP `port` (container port `port_name`)."""
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        target = p.get("port")
        if target is None:
            return True
        if isinstance(target, str):
            if port_name is not None and target == port_name:
                return True
        elif target <= port <= p.get("endPort", target):
            return True
    return False


class Checker:
    def __init__(self, binaries):
        self.binaries = binaries
        self.errors = []

    def error(self, where, message):
        self.errors.append(f"{where}: {message}")

    def container_env(self, where, container, configmaps):
        env = {}
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                continue  # values live in the cluster, never in the manifests
            ref = source.get("configMapRef", {}).get("name")
            if ref not in configmaps:
                self.error(where, f"envFrom names ConfigMap {ref!r}, which is not rendered")
                continue
            env.update(configmaps[ref])
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = self.expand(where, var["value"], env)
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = RUNTIME
            elif "configMapKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["configMapKeyRef"]
                env[var["name"]] = configmaps.get(ref["name"], {}).get(ref["key"])
        return env

    def expand(self, where, text, env):
        def sub(m):
            value = env.get(m.group(1))
            if value is RUNTIME:
                return "<" + m.group(1) + ">"
            if value is None:
                self.error(where, f"$({m.group(1)}) is not defined by the ConfigMap or env")
                return ""
            return str(value)

        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, text)

    def parse_flags(self, where, binary, args):
        flags = {}
        i = 0
        while i < len(args):
            arg = args[i]
            if not arg.startswith("--"):
                self.error(where, f"{binary.name} takes no positional argument {arg!r}")
                i += 1
                continue
            name, eq, value = arg.partition("=")
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            i += 1
            if name not in binary.flags:
                self.error(where, f"{binary.name} has no flag {name} (its --help lists "
                           f"{', '.join(sorted(binary.flags))})")
            flags[name] = value
        for name in sorted(binary.required - flags.keys()):
            self.error(where, f"{binary.name} requires {name}")
        return flags

    def check(self, docs):
        configmaps = {d["metadata"]["name"]: d.get("data", {})
                      for d in docs if d.get("kind") == "ConfigMap"}
        templates = [t for d in docs for t in pod_templates(d)]
        worker_ports = set()
        model_roots = set()
        routers = []
        # Per pod template: (where, template, extra labels, role, {flag: (port, port name)}).
        self.pods = []
        for where, template, extra in templates:
            spec = template.get("spec", {})
            grace = spec.get("terminationGracePeriodSeconds", 30)
            self.check_waits_for_model(where, spec, configmaps)
            for container in spec.get("containers", []):
                cwhere = f"{where} container {container.get('name')}"
                command = container.get("command") or []
                binary = self.binaries.get(pathlib.Path(command[0]).name) if command else None
                if binary is None:
                    self.error(cwhere, "command must start one of " + ", ".join(BINARIES))
                    continue
                env = self.container_env(cwhere, container, configmaps)
                args = [self.expand(cwhere, a, env) for a in container.get("args", [])]
                flags = self.parse_flags(cwhere, binary, args)
                ports = {p.get("containerPort") for p in container.get("ports", [])}
                port_names = {p.get("containerPort"): p.get("name")
                              for p in container.get("ports", [])}
                self.check_cluster_secret(cwhere, spec, container, flags)
                listens = {}
                listen_port = None
                for flag in LISTEN_FLAGS:
                    if flag not in flags:
                        continue
                    m = re.fullmatch(r".*:(\d+)", flags[flag])
                    if not m:
                        self.error(cwhere, f"{flag}={flags[flag]} has no numeric port")
                        continue
                    port = int(m.group(1))
                    listens[flag] = (port, port_names.get(port))
                    if port not in ports:
                        self.error(cwhere, f"{flag} binds {port}, not a containerPort "
                                   f"({sorted(p for p in ports if p)})")
                    if flag == "--listen":
                        listen_port = port
                for probe_name in PROBES:
                    probe = container.get(probe_name)
                    grpc = (probe or {}).get("grpc")
                    if grpc is None:
                        self.error(cwhere, f"{probe_name} must be a native gRPC probe")
                    elif not isinstance(grpc.get("port"), int):
                        self.error(cwhere, f"{probe_name}.grpc.port must be an integer")
                    elif listen_port is not None and grpc["port"] != listen_port:
                        self.error(cwhere, f"{probe_name}.grpc.port {grpc['port']} is not the "
                                   f"--listen port {listen_port} (where health is served)")
                pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
                sleep_s = pre_stop.get("seconds")
                if not isinstance(sleep_s, int) or sleep_s < 1:
                    self.error(cwhere, "needs lifecycle.preStop.sleep.seconds >= 1, so the pod "
                               "leaves the Service endpoints before SIGTERM")
                    sleep_s = 0
                drain_s = sum(int(flags.get(f) or binary.flags[f] or 0)
                              for f in binary.drain_flags())
                needed = sleep_s + drain_s + binary.shutdown_s + 1
                if grace < needed:
                    self.error(cwhere, f"terminationGracePeriodSeconds {grace} < preStop {sleep_s}"
                               f" s + drain {drain_s} s + shutdown {binary.shutdown_s} s + 1 s")
                if binary.name == "shardserve-worker" and listen_port is not None:
                    worker_ports.add(listen_port)
                if binary.name == "shardserve-worker":
                    root = self.check_model_root(cwhere, container, flags)
                    if root:
                        model_roots.add(root)
                if binary.name == "shardserve-router":
                    routers.append((cwhere, flags))
                    self.check_api_key(cwhere, binary, container, args)
                role = "router" if binary.name == "shardserve-router" else "worker"
                self.pods.append((cwhere, template, extra, role, listens))
        headless = {d["metadata"]["name"] for d in docs
                    if d.get("kind") == "Service" and d["spec"].get("clusterIP") == "None"}
        for cwhere, flags in routers:
            model = flags.get("--model", "")
            outside = sorted(r for r in model_roots if not model.startswith(r.rstrip("/") + "/"))
            if model and outside:
                self.error(cwhere, f"--model {model} is not inside the workers' --model-root "
                           f"{outside}: they would refuse to load it")
            spec = flags.get("--workers", "")
            stages = int(flags.get("--stages") or 0)
            replicas = int(flags.get("--replicas") or 1)
            if spec.startswith("dns:///"):
                # One name for every worker pod: a headless Service of these manifests.
                addresses = [spec[len("dns:///"):]]
                name = addresses[0].rsplit(":", 1)[0].split(".")[0]
                if name not in headless:
                    self.error(cwhere, f"--workers {spec}: {name} is not a headless Service here "
                               f"({sorted(headless)})")
                if not stages:
                    self.error(cwhere, "--workers dns:///... needs --stages")
            else:
                addresses = [a for a in spec.split(",") if a]
                # More addresses than the pipelines need are spares.
                if stages and len(addresses) < stages * replicas:
                    self.error(cwhere, f"--workers lists {len(addresses)} addresses for {stages} "
                               f"stages x {replicas} replicas")
            for address in addresses:
                m = re.fullmatch(r".*:(\d+)", address)
                if not m or int(m.group(1)) not in worker_ports:
                    self.error(cwhere, f"--workers address {address} is not a port a worker "
                               f"listens on ({sorted(worker_ports)})")
        self.check_selectors(docs, templates)
        self.check_network_policies(docs)
        self.router_models = {flags.get("--model") for _, flags in routers}
        self.check_model_loader(docs, configmaps)
        self.check_ingresses(docs)
        for d in docs:
            if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
                self.error(f"Secret/{d['metadata']['name']}", "carries a value; credentials "
                           "must not live in git: create the Secret in the cluster "
                           "(docs/DEPLOY.md) and only refer to it here")

    def check_api_key(self, where, binary, container, args):
        """The router's --api-key comes from the Secret through $SHARDSERVE_API_KEY."""
        if any(a == "--api-key" or a.startswith("--api-key=") for a in args):
            self.error(where, "passes --api-key in its arguments: the key would sit in the "
                       f"manifests and in `ps`; set ${API_KEY_ENV} from the Secret "
                       f"{API_KEY_SECRET} instead")
        if binary.env.get("--api-key") != API_KEY_ENV:
            self.error(where, f"{binary.name} --help does not read --api-key from ${API_KEY_ENV} "
                       f"(it reads {binary.env.get('--api-key')!r}), so the Secret never "
                       "reaches it")
        var = next((v for v in container.get("env", []) if v.get("name") == API_KEY_ENV), None)
        ref = ((var or {}).get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            self.error(where, f"lacks env {API_KEY_ENV} from the Secret {API_KEY_SECRET} (key "
                       f"{API_KEY_SECRET_KEY!r}): without it the public APIs take any caller")
            return
        if ref.get("name") != API_KEY_SECRET or ref.get("key") != API_KEY_SECRET_KEY:
            self.error(where, f"{API_KEY_ENV} comes from Secret {ref.get('name')!r} key "
                       f"{ref.get('key')!r}, not {API_KEY_SECRET} key {API_KEY_SECRET_KEY!r}")
        if ref.get("optional"):
            self.error(where, f"{API_KEY_ENV}: the Secret {API_KEY_SECRET} must not be optional "
                       "(a router without it would serve everyone)")

    def model_mounts(self, spec, container):
        """The container's mounts of the model claim: [(mountPath, writable)]."""
        claims = {v.get("name"): v for v in spec.get("volumes", [])
                  if (v.get("persistentVolumeClaim") or {}).get("claimName") == MODEL_CLAIM}
        out = []
        for m in container.get("volumeMounts", []):
            volume = claims.get(m.get("name"))
            if volume is None:
                continue
            writable = not m.get("readOnly") and not volume["persistentVolumeClaim"].get(
                "readOnly")
            out.append((m.get("mountPath", "").rstrip("/"), writable))
        return out

    def check_waits_for_model(self, where, spec, configmaps):
        """An init container waits for $(MODEL)/config.json on the model volume, read-only."""
        waits = []
        for container in spec.get("initContainers", []):
            text = " ".join(container.get("command", []) + container.get("args", []))
            env = self.container_env(where, container, configmaps)
            if "$MODEL/config.json" not in text or not isinstance(env.get("MODEL"), str):
                continue
            mounts = self.model_mounts(spec, container)
            model = env["MODEL"]
            if not any(model.startswith(path + "/") for path, _ in mounts):
                self.error(f"{where} init container {container.get('name')}",
                           f"waits for {model} but does not mount the claim {MODEL_CLAIM} "
                           "above it")
                continue
            waits.append(container)
        if not waits:
            self.error(where, "has no init container waiting for $(MODEL)/config.json: the "
                       "router and workers would start (and crash-loop) before the model is on "
                       "the volume")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for path, writable in self.model_mounts(spec, container):
                if writable:
                    self.error(f"{where} container {container.get('name')}",
                               f"mounts the model claim writable at {path}: only the "
                               f"{MODEL_LOADER_JOB} Job writes it")

    def check_model_loader(self, docs, configmaps):
        """The loader Job writes the claim the pods read, at the same MODEL, with load-model.sh."""
        script = (REPO / "deploy/k8s/components/model-loader/load-model.sh").read_text()
        claim = next((d for d in docs if d.get("kind") == "PersistentVolumeClaim" and
                      d["metadata"]["name"] == MODEL_CLAIM), None)
        for job in (d for d in docs if d.get("kind") == "Job"):
            where = f"Job/{job['metadata']['name']}"
            spec = job["spec"].get("template", {}).get("spec", {})
            if spec.get("restartPolicy") not in ("OnFailure", "Never"):
                self.error(where, "restartPolicy must be OnFailure or Never")
            if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
                self.error(where, "must run as non-root (securityContext.runAsNonRoot)")
            for container in spec.get("containers", []):
                cwhere = f"{where} container {container.get('name')}"
                env = self.container_env(cwhere, container, configmaps)
                model = env.get("MODEL")
                if not isinstance(model, str) or not model:
                    self.error(cwhere, "has no MODEL from the shardserve-flags ConfigMap")
                    continue
                if model not in self.router_models:
                    self.error(cwhere, f"loads MODEL={model}, but the routers read "
                               f"{sorted(m for m in self.router_models if m)}: the pods would wait "
                               "for a model that never comes")
                writable = [p for p, w in self.model_mounts(spec, container) if w]
                if not any(model.startswith(p + "/") for p in writable):
                    self.error(cwhere, f"does not mount the claim {MODEL_CLAIM} writable above "
                               f"MODEL={model} (mounted writable: {writable})")
                if not env.get("MODEL_SOURCE"):
                    self.error(cwhere, "has no MODEL_SOURCE (shardserve-model-source)")
                command = container.get("command", [])
                loader = next((c for c in command if c.endswith("/load-model.sh")), None)
                mounted = [(m.get("mountPath", "").rstrip("/"), m.get("name"))
                           for m in container.get("volumeMounts", [])]
                source = None
                for path, name in mounted:
                    if loader and loader == f"{path}/load-model.sh":
                        volume = next((v for v in spec.get("volumes", [])
                                       if v.get("name") == name), {})
                        cm = (volume.get("configMap") or {}).get("name")
                        source = (next((d for d in docs if d.get("kind") == "ConfigMap" and
                                        d["metadata"]["name"] == cm), None) or {}).get(
                                            "data", {}).get("load-model.sh")
                if source != script:
                    self.error(cwhere, "does not run deploy/k8s/components/model-loader/"
                               "load-model.sh from a ConfigMap volume")
            if claim is not None and "ReadWriteMany" not in claim["spec"].get("accessModes", []):
                self.error(where, f"writes the claim {MODEL_CLAIM}, whose accessModes "
                           f"{claim['spec'].get('accessModes')} lack ReadWriteMany")

    def check_ingresses(self, docs):
        """TLS for every host; only /v1, and only to the router Service's HTTP port."""
        services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
        for ingress in (d for d in docs if d.get("kind") == "Ingress"):
            where = f"Ingress/{ingress['metadata']['name']}"
            spec = ingress.get("spec", {})
            tls_hosts = {h for t in spec.get("tls", []) if t.get("secretName")
                         for h in t.get("hosts", [])}
            if spec.get("defaultBackend"):
                self.error(where, "has a defaultBackend: route only /v1")
            for rule in spec.get("rules", []):
                host = rule.get("host")
                if not host or host not in tls_hosts:
                    self.error(where, f"host {host!r} has no TLS (spec.tls with a secretName): "
                               "API keys and prompts would cross the internet in clear text")
                for path in (rule.get("http") or {}).get("paths", []):
                    p = path.get("path", "/")
                    if p.rstrip("/") not in INGRESS_PATHS:
                        self.error(where, f"routes path {p!r}: only {list(INGRESS_PATHS)} may "
                                   "leave the cluster (/v1/cluster, /console, /metrics and "
                                   "/health stay inside)")
                    backend = (path.get("backend") or {}).get("service") or {}
                    svc = services.get(backend.get("name"))
                    port = backend.get("port") or {}
                    target = None
                    for sp in (svc or {}).get("spec", {}).get("ports", []):
                        if ("name" in port and sp.get("name") == port["name"]) or (
                                "number" in port and sp.get("port") == port["number"]):
                            target = sp.get("targetPort")
                    if svc is None or target != "http":
                        self.error(where, f"path {p!r} goes to {backend.get('name')!r} port "
                                   f"{port}: not the router Service's port that targets the "
                                   "router's http (--http-listen) port")

    def check_model_root(self, where, container, flags):
        """--model-root is set and lies inside a volumeMount; returns it."""
        root = flags.get("--model-root")
        if not root:
            self.error(where, "lacks --model-root (without it a caller holding the cluster "
                       "credential may load any folder the worker can read): pass the model "
                       "volume's mountPath")
            return None
        mounts = [m.get("mountPath", "").rstrip("/") for m in container.get("volumeMounts", [])]
        if not any(root.rstrip("/") == m or root.startswith(m + "/") for m in mounts if m):
            self.error(where, f"--model-root {root} is not inside any volumeMount of the "
                       f"container ({sorted(mounts)})")
        return root

    def check_cluster_secret(self, where, spec, container, flags):
        """--cluster-secret-file names the key of the cluster Secret, mounted read-only."""
        if "--insecure-cluster" in flags:
            self.error(where, "passes --insecure-cluster: any pod that reaches the worker port "
                       "could drive the workers; use --cluster-secret-file")
        path = flags.get("--cluster-secret-file")
        if not path:
            self.error(where, f"lacks --cluster-secret-file (without a cluster credential the "
                       f"binary refuses to start): mount the Secret {CLUSTER_SECRET} and pass "
                       f"--cluster-secret-file=<mountPath>/{CLUSTER_SECRET_KEY}")
            return
        mounts = [m for m in container.get("volumeMounts", [])
                  if path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
        if not mounts:
            self.error(where, f"--cluster-secret-file {path} is not inside any volumeMount of "
                       f"the container (mount the Secret {CLUSTER_SECRET} there)")
            return
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        relative = path[len(mount["mountPath"].rstrip("/")) + 1:]
        mwhere = f"--cluster-secret-file {path}: volumeMount {mount.get('name')!r}"
        if mount.get("readOnly") is not True:
            self.error(where, f"{mwhere} must be readOnly: true")
        if mount.get("subPath") or mount.get("subPathExpr"):
            self.error(where, f"{mwhere} must not use subPath (a rotated Secret never reaches it)")
        volume = next((v for v in spec.get("volumes", []) if v.get("name") == mount.get("name")),
                      None)
        secret = (volume or {}).get("secret")
        if secret is None:
            self.error(where, f"{mwhere} is not a volume of the Secret {CLUSTER_SECRET} "
                       f"(it is {sorted(k for k in (volume or {}) if k != 'name') or 'missing'})")
            return
        if secret.get("secretName") != CLUSTER_SECRET:
            self.error(where, f"{mwhere} mounts Secret {secret.get('secretName')!r}, not the "
                       f"cluster credential {CLUSTER_SECRET}")
        if secret.get("optional"):
            self.error(where, f"{mwhere}: the Secret must not be optional (a pod without it "
                       "cannot start anyway; fail at mount time, visibly)")
        items = secret.get("items")
        keys = ({i.get("path"): i.get("key") for i in items} if items
                else {CLUSTER_SECRET_KEY: CLUSTER_SECRET_KEY})
        if keys.get(relative) != CLUSTER_SECRET_KEY:
            self.error(where, f"--cluster-secret-file {path} is not the Secret's key "
                       f"{CLUSTER_SECRET_KEY!r} in that volume (the volume holds "
                       f"{sorted(keys)})")

    def check_network_policies(self, docs):
        policies = [d for d in docs if d.get("kind") == "NetworkPolicy" and isolates_ingress(d)]

        def selecting(template, extra):
            labels = template_labels(template, extra)
            return [p for p in policies
                    if label_selector_matches(p["spec"].get("podSelector") or {}, labels)]

        routers = [(w, t, e) for w, t, e, role, _ in self.pods if role == "router"]
        workers = [(w, t, e) for w, t, e, role, _ in self.pods if role == "worker"]
        for where, template, extra, role, listens in self.pods:
            chosen = selecting(template, extra)
            rules = [(p, r) for p in chosen for r in p["spec"].get("ingress") or []]
            if role == "router":
                if not chosen:
                    continue  # not isolated: every port is open
                for flag in ("--listen", "--http-listen"):
                    if flag not in listens:
                        continue
                    port, name = listens[flag]
                    if not any(rule_covers(r, port, name) and not r.get("from")
                               for _, r in rules):
                        names = ", ".join(p["metadata"]["name"] for p in chosen)
                        self.error(where, f"NetworkPolicy {names} isolates this router pod but "
                                   f"does not open its public port {port} ({flag}) to every "
                                   "source")
                continue
            if "--listen" not in listens:
                continue
            port, name = listens["--listen"]
            if not chosen:
                self.error(where, f"no NetworkPolicy selects this worker pod for ingress: its "
                           f"WorkerService port {port} is reachable from every pod and address; "
                           "add a policy that admits only router and worker pods")
                continue
            admitted = []  # peer podSelectors admitted to the worker port
            for policy, rule in rules:
                if not rule_covers(rule, port, name):
                    continue
                pwhere = f"NetworkPolicy/{policy['metadata']['name']}"
                peers = rule.get("from") or []
                if not peers:
                    self.error(pwhere, f"admits every source to the worker port {port} ({where}); "
                               "only router and worker pods may reach it")
                for peer in peers:
                    if "ipBlock" in peer:
                        self.error(pwhere, f"admits ipBlock {peer['ipBlock'].get('cidr')} to the "
                                   f"worker port {port}; only router and worker pods may reach it")
                    elif "namespaceSelector" in peer:
                        self.error(pwhere, f"admits pods of other namespaces (namespaceSelector "
                                   f"{peer['namespaceSelector']}) to the worker port {port}; only "
                                   "this namespace's router and worker pods may reach it")
                    elif not peer.get("podSelector"):
                        self.error(pwhere, f"admits every pod of the namespace (empty "
                                   f"podSelector) to the worker port {port}; select router and "
                                   "worker pods by their labels")
                    else:
                        selector = peer["podSelector"]
                        matched = [w for w, t, e in routers + workers
                                   if label_selector_matches(selector, template_labels(t, e))]
                        if not matched:
                            self.error(pwhere, f"admits pods {selector} to the worker port "
                                       f"{port}, which match no router or worker pod here")
                        admitted.append(selector)
            for kind, group in (("router", routers), ("worker", workers)):
                for other, t, e in group:
                    if not any(label_selector_matches(s, template_labels(t, e))
                               for s in admitted):
                        self.error(where, f"NetworkPolicy keeps {kind} pods ({other}) from "
                                   f"the worker port {port}, which they must reach")
            if "--metrics-listen" in listens:
                mport, mname = listens["--metrics-listen"]
                if not any(rule_covers(r, mport, mname) for _, r in rules):
                    self.error(where, f"NetworkPolicy blocks the metrics port {mport} "
                               "(--metrics-listen) from every scraper")

    def check_selectors(self, docs, templates):
        by_kind_name = {(d.get("kind"), d["metadata"]["name"]) for d in docs}
        for d in docs:
            kind, name = d.get("kind"), d["metadata"]["name"]
            where = f"{kind}/{name}"
            if kind == "Service":
                selector = d["spec"].get("selector", {})
                chosen = [t for _, t, extra in templates
                          if selects(selector, {**t.get("metadata", {}).get("labels", {}),
                                                **extra})]
                if not chosen:
                    self.error(where, f"selector {selector} matches no pod template")
                names = {p.get("name") for t in chosen for c in t["spec"]["containers"]
                         for p in c.get("ports", [])}
                for port in d["spec"].get("ports", []):
                    target = port.get("targetPort", port.get("port"))
                    if isinstance(target, str) and target not in names:
                        self.error(where, f"targetPort {target!r} is no containerPort name of "
                                   f"the pods it selects ({sorted(n for n in names if n)})")
                if name == "shardserve-router":
                    missing = {"grpc", "http", "metrics"} - {p.get("name")
                                                            for p in d["spec"]["ports"]}
                    if missing:
                        self.error(where, f"lacks named ports {sorted(missing)}")
            elif kind == "PodDisruptionBudget":
                selector = d["spec"].get("selector", {}).get("matchLabels", {})
                if not any(selects(selector, {**t.get("metadata", {}).get("labels", {}), **e})
                           for _, t, e in templates):
                    self.error(where, f"selector {selector} matches no pod template")
            elif kind == "HorizontalPodAutoscaler":
                ref = d["spec"]["scaleTargetRef"]
                if (ref["kind"], ref["name"]) not in by_kind_name:
                    self.error(where, f"scaleTargetRef {ref['kind']}/{ref['name']} is not rendered")
                router = self.binaries["shardserve-router"].binary_bytes
                for metric in d["spec"].get("metrics", []):
                    metric_name = metric.get("pods", {}).get("metric", {}).get("name")
                    if metric_name and metric_name.encode() not in router:
                        self.error(where, f"metric {metric_name} is not exported by "
                                   "shardserve-router")


def write_typescript(docs, overlay, out_dir):
    imports, lines = {}, []
    for i, d in enumerate(docs):
        key = (d.get("apiVersion"), d.get("kind"))
        if key not in TS_TYPES:
            raise SystemExit(f"check_manifests: {overlay}: no type for {key[0]} {key[1]}; add it "
                             "to TS_TYPES")
        module, type_name = TS_TYPES[key]
        imports.setdefault(module, set()).add(type_name)
        lines.append(f"export const o{i}: {type_name} = {json.dumps(d, indent=2)};")
    head = [f"import {{ {', '.join(sorted(names))} }} from \"{module}\";"
            for module, names in sorted(imports.items())]
    path = pathlib.Path(out_dir) / f"{overlay}.ts"
    path.write_text(f"// {overlay}: rendered by kubectl kustomize; generated.\n" +
                    "\n".join(head + lines) + "\n")


def render(overlay_dir):
    out = subprocess.run(["kubectl", "kustomize", str(overlay_dir)], capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"check_manifests: kubectl kustomize {overlay_dir} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def self_test(binaries, docs, overlay):
    """Each mutation must be reported; returns the number that were not."""

    def find(docs, kind):
        return next(d for d in docs if d["kind"] == kind)

    def first_container(docs):
        d = next(d for d in docs if d["kind"] in ("LeaderWorkerSet", "Deployment"))
        return next(pod_templates(d))[1]["spec"]["containers"][0]

    def flag(docs):
        first_container(docs)["args"].append("--max-seq=8")

    def probe(docs):
        first_container(docs)["readinessProbe"]["grpc"]["port"] += 1

    def named_probe(docs):
        first_container(docs)["livenessProbe"]["grpc"]["port"] = "grpc"

    def grace(docs):
        d = next(d for d in docs if d["kind"] in ("LeaderWorkerSet", "Deployment"))
        next(pod_templates(d))[1]["spec"]["terminationGracePeriodSeconds"] = 3

    def config_port(docs):
        find(docs, "ConfigMap")  # the flags ConfigMap is the one with WORKER_PORT
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "WORKER_PORT" in d["data"])
        cm["data"]["WORKER_PORT"] = "50062"

    def undefined_var(docs):
        first_container(docs)["args"].append("--model=$(NO_SUCH_VAR)")

    def service_port(docs):
        svc = next(d for d in docs if d["kind"] == "Service")
        svc["spec"]["ports"][0]["targetPort"] = "grcp"

    def hpa_metric(docs):
        hpa = find(docs, "HorizontalPodAutoscaler")
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "shardserve_no_such_metric"

    # The cluster credential and the NetworkPolicies, in every variant (LWS and StatefulSet).
    def worker_containers(docs):
        return [c for d in docs for _, t, _ in pod_templates(d) for c in t["spec"]["containers"]
                if c["command"][0].endswith("shardserve-worker")]

    def last_worker_pod(docs):
        """The pod spec of a template that runs only a worker."""
        return next(t["spec"] for d in reversed(docs) for _, t, _ in pod_templates(d)
                    if len(t["spec"]["containers"]) == 1 and
                    t["spec"]["containers"][0]["command"][0].endswith("shardserve-worker"))

    def secret_args(container):
        return [i for i, a in enumerate(container["args"])
                if a.startswith("--cluster-secret-file")]

    def secret_volume(spec):
        path = next(a.partition("=")[2] for a in spec["containers"][0]["args"]
                    if a.startswith("--cluster-secret-file="))
        mount = next(m for m in spec["containers"][0]["volumeMounts"]
                     if path.startswith(m["mountPath"] + "/"))
        return mount, next(v for v in spec["volumes"] if v["name"] == mount["name"])

    def worker_policies(docs):
        return [d for d in docs if d["kind"] == "NetworkPolicy" and
                d["metadata"]["name"] != "shardserve-router"]

    def worker_port_rule(docs):
        return worker_policies(docs)[0]["spec"]["ingress"][0]

    def secret_flag_missing(docs):
        container = last_worker_pod(docs)["containers"][0]
        for i in reversed(secret_args(container)):
            del container["args"][i]

    def secret_flag_outside_mount(docs):
        container = worker_containers(docs)[0]
        container["args"][secret_args(container)[0]] = "--cluster-secret-file=/tmp/secret"

    def secret_wrong_key(docs):
        container = worker_containers(docs)[-1]
        container["args"][secret_args(container)[0]] += "-key"

    def secret_volume_empty_dir(docs):
        volume = secret_volume(last_worker_pod(docs))[1]
        volume.pop("secret")
        volume["emptyDir"] = {}

    def secret_volume_other_secret(docs):
        secret_volume(last_worker_pod(docs))[1]["secret"]["secretName"] = "some-other-secret"

    def secret_mount_writable(docs):
        secret_volume(last_worker_pod(docs))[0]["readOnly"] = False

    def model_root_missing(docs):
        container = worker_containers(docs)[-1]
        container["args"] = [a for a in container["args"] if not a.startswith("--model-root")]

    def model_root_elsewhere(docs):
        for container in worker_containers(docs):
            container["args"] = [("--model-root=/srv/other" if a.startswith("--model-root")
                                  else a) for a in container["args"]]

    def insecure_cluster(docs):
        worker_containers(docs)[-1]["args"].append("--insecure-cluster")

    def secret_in_git(docs):
        docs.append({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": "shardserve-cluster-secret"},
                     "stringData": {"secret": "0123456789abcdef0123"}})

    def no_worker_policy(docs):
        for policy in worker_policies(docs):
            docs.remove(policy)

    def worker_port_open(docs):
        worker_port_rule(docs).pop("from")

    def worker_port_any_pod(docs):
        worker_port_rule(docs)["from"].append({"podSelector": {}})

    def worker_port_namespace(docs):
        worker_port_rule(docs)["from"].append({"namespaceSelector": {}})

    def worker_port_ip_block(docs):
        worker_port_rule(docs)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})

    def worker_port_all_ports(docs):
        # A rule with no ports that admits any pod of the namespace.
        worker_policies(docs)[0]["spec"]["ingress"].append({"from": [{"podSelector": {}}]})

    def routers_shut_out(docs):
        for peer in worker_port_rule(docs)["from"]:
            peer["podSelector"].setdefault("matchExpressions", []).append(
                {"key": "shardserve.io/router", "operator": "DoesNotExist"})

    def router_ports_closed(docs):
        router = next(d for d in docs if d["kind"] == "NetworkPolicy" and
                      d["metadata"]["name"] == "shardserve-router")
        router["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]

    def router_containers(docs):
        return [c for d in docs for _, t, _ in pod_templates(d) for c in t["spec"]["containers"]
                if c["command"][0].endswith("shardserve-router")]

    def api_key_env(container):
        return next(v for v in container["env"] if v["name"] == "SHARDSERVE_API_KEY")

    def api_key_missing(docs):
        container = router_containers(docs)[0]
        container["env"] = [v for v in container["env"] if v["name"] != "SHARDSERVE_API_KEY"]

    def api_key_optional(docs):
        api_key_env(router_containers(docs)[0])["valueFrom"]["secretKeyRef"]["optional"] = True

    def api_key_other_secret(docs):
        api_key_env(router_containers(docs)[0])["valueFrom"]["secretKeyRef"]["name"] = "keys"

    def api_key_in_args(docs):
        router_containers(docs)[0]["args"].append("--api-key=sk-in-git")

    def api_key_in_git(docs):
        docs.append({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": "shardserve-api-key"},
                     "data": {"api-key": "c2staW4tZ2l0"}})

    def no_wait_for_model(docs):
        last_worker_pod(docs).pop("initContainers")

    def wait_without_volume(docs):
        spec = last_worker_pod(docs)
        spec["initContainers"][0]["volumeMounts"] = []

    def model_mount_writable(docs):
        container = worker_containers(docs)[0]
        next(m for m in container["volumeMounts"] if m["name"] == "models")["readOnly"] = False
        for d in docs:
            for _, t, _ in pod_templates(d):
                for v in t["spec"].get("volumes", []):
                    if "persistentVolumeClaim" in v:
                        v["persistentVolumeClaim"].pop("readOnly", None)

    def loader_job(docs):
        return next(d for d in docs if d["kind"] == "Job")

    def loader_read_only(docs):
        spec = loader_job(docs)["spec"]["template"]["spec"]
        next(m for m in spec["containers"][0]["volumeMounts"]
             if m["name"] == "models")["readOnly"] = True

    def loader_other_model(docs):
        spec = loader_job(docs)["spec"]["template"]["spec"]
        spec["containers"][0].setdefault("env", []).append({"name": "MODEL",
                                                            "value": "/data/model"})

    def loader_model_beside(docs):
        spec = loader_job(docs)["spec"]["template"]["spec"]
        spec["containers"][0].setdefault("env", []).append({"name": "MODEL",
                                                            "value": "/models/other"})

    def loader_other_script(docs):
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and
                  "load-model.sh" in d.get("data", {}))
        cm["data"]["load-model.sh"] = "cp -r \"$MODEL_SOURCE\" \"$MODEL\"\n"

    def loader_claim_read_only_many(docs):
        claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
        claim["spec"]["accessModes"] = ["ReadOnlyMany"]

    def ingress(docs):
        return next(d for d in docs if d["kind"] == "Ingress")

    def ingress_no_tls(docs):
        ingress(docs)["spec"].pop("tls")

    def ingress_whole_site(docs):
        ingress(docs)["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/"

    def ingress_metrics(docs):
        paths = ingress(docs)["spec"]["rules"][0]["http"]["paths"]
        paths.append(copy.deepcopy(paths[0]))
        paths[-1]["path"] = "/metrics"

    def ingress_cluster_status(docs):
        ingress(docs)["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/v1"

    def ingress_grpc_port(docs):
        backend = ingress(docs)["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        backend["port"] = {"name": "grpc"}

    def old_binary(binaries):
        # A binary built before the cluster credential: --help lacks the flag.
        for binary in binaries.values():
            binary.flags.pop("--cluster-secret-file", None)

    def router_without_env(binaries):
        # A router whose --api-key does not read $SHARDSERVE_API_KEY: the Secret is lost.
        binaries["shardserve-router"].env.pop("--api-key", None)

    doc_mutations = (secret_flag_missing, secret_flag_outside_mount, secret_wrong_key,
                     secret_volume_empty_dir, secret_volume_other_secret, secret_mount_writable,
                     insecure_cluster, model_root_missing, model_root_elsewhere, secret_in_git,
                     no_worker_policy, worker_port_open, worker_port_any_pod,
                     worker_port_namespace, worker_port_ip_block, worker_port_all_ports,
                     routers_shut_out, router_ports_closed, api_key_missing, api_key_optional,
                     api_key_other_secret, api_key_in_args, api_key_in_git, no_wait_for_model,
                     wait_without_volume, model_mount_writable)
    binary_mutations = (old_binary, router_without_env)
    if overlay == "gpu-production":
        doc_mutations = (loader_read_only, loader_other_model, loader_model_beside,
                         loader_other_script,
                         loader_claim_read_only_many, ingress_no_tls, ingress_whole_site,
                         ingress_metrics, ingress_cluster_status, ingress_grpc_port)
        binary_mutations = ()
    if overlay == "cpu":
        doc_mutations = (flag, probe, named_probe, grace, config_port, undefined_var,
                         service_port, hpa_metric) + doc_mutations

    baseline = Checker(binaries)
    baseline.check(docs)
    failures = 0
    for mutate in doc_mutations + binary_mutations:
        broken, broken_binaries = copy.deepcopy(docs), copy.deepcopy(binaries)
        mutate(broken_binaries if mutate in binary_mutations else broken)
        checker = Checker(broken_binaries)
        checker.check(broken)
        new = [e for e in checker.errors if e not in baseline.errors]
        failures += not new
        print(f"  self-test {overlay} {mutate.__name__}: " +
              (f"caught ({new[0]})" if new else "MISSED"))

    # The --help parser must see the new flags as CLI11 prints them (an Env: note after the type).
    parsed = Binary("shardserve-worker", "Options:\n"
                    "  --cluster-secret-file TEXT (Env:SHARDSERVE_CLUSTER_SECRET_FILE)\n"
                    "                              file holding the cluster's shared secret\n"
                    "  --api-key TEXT (Env:SHARDSERVE_API_KEY)\n"
                    "                              key clients must send\n"
                    "  --insecure-cluster          run without a cluster credential\n", 0, b"")
    ok = ({"--cluster-secret-file", "--insecure-cluster", "--api-key"} <= parsed.flags.keys() and
          parsed.env.get("--api-key") == "SHARDSERVE_API_KEY")
    failures += not ok
    print(f"  self-test {overlay} help_parser: " +
          ("reads --cluster-secret-file, --insecure-cluster, --api-key (Env:SHARDSERVE_API_KEY)"
           if ok else f"MISSED (parsed {sorted(parsed.flags)}, env {parsed.env})"))
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default="build", help="build folder with bin/")
    parser.add_argument("--overlays", default=str(REPO / "deploy/k8s/overlays"))
    parser.add_argument("--typescript", help="write <overlay>.ts files here")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()

    binaries = load_binaries(args.build)
    overlays = sorted(p for p in pathlib.Path(args.overlays).iterdir() if p.is_dir())
    if not overlays:
        sys.exit(f"check_manifests: no overlays under {args.overlays}")
    errors = 0
    for overlay in overlays:
        docs = render(overlay)
        checker = Checker(binaries)
        checker.check(docs)
        for e in checker.errors:
            print(f"{overlay.name}: {e}", file=sys.stderr)
        errors += len(checker.errors)
        print(f"check_manifests: {overlay.name}: {len(docs)} objects, "
              f"{len(checker.errors)} problems")
        if args.typescript:
            write_typescript(docs, overlay.name, args.typescript)
        if args.self_test and overlay.name in ("cpu", "cpu-statefulset", "gpu-production"):
            errors += self_test(binaries, docs, overlay.name)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
