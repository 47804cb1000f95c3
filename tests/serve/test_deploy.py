"""deploy/kserve.yaml, checked without a cluster: two documents of KServe's kinds that refer to each other, a
container that runs `densepure serve` with options that parse (the runtime's args, then the
InferenceService's, as KServe joins them), on the port the probes and Prometheus use, probing routes the app
has, one GPU per pod, and a grace period longer than the server's drain."""

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with ray) reads the manifest")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest():
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kserve.yaml").read_text()) if d is not None]
    return {d["kind"]: d for d in documents}


def routes():
    from densepure.serve.app import create_app
    from densepure.serve.runtime import Runtime
    from densepure.serve.settings import ServeOptions

    app = create_app(Runtime(ServeOptions()))  # nothing loads until the app starts
    return {getattr(route, "path", None) for route in app.routes}


def test_a_serving_runtime_and_an_inference_service_that_uses_it(manifest):
    assert set(manifest) == {"ServingRuntime", "InferenceService"}
    runtime, service = manifest["ServingRuntime"], manifest["InferenceService"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"] and spec["multiModel"] is False
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert model["storageUri"].split("://")[0] in ("s3", "gs", "pvc", "https", "hf")


def test_the_container_serves_with_options_that_parse(manifest, tmp_path):
    from densepure.cli import build_parser
    from densepure.cli.arguments import options_from_args

    (container,) = manifest["ServingRuntime"]["spec"]["containers"]
    assert container["name"] == "kserve-container"
    argv = [*container["command"], *container["args"], *manifest["InferenceService"]["spec"]["predictor"]["model"]
            ["args"]]
    assert argv[:2] == ["densepure", "serve"] and all(isinstance(a, str) for a in argv)
    models = [a for a in argv if "/mnt/models/" in a]  # where the storage initializer puts the model files
    assert argv[argv.index("--checkpoint") + 1] in models
    here = [a.replace("/mnt/models", str(tmp_path)) for a in argv]  # the files must exist when options are built
    for arg in models:
        path = tmp_path / arg.split("/mnt/models/", 1)[1]
        path.mkdir() if arg.startswith("hf:") else path.write_bytes(b"")
    options = options_from_args(build_parser().parse_args(here[1:]))
    assert (options.host, options.port) == ("0.0.0.0", 8080)
    assert options.job.execution.device == "cuda" and options.model_name == "cifar10"
    assert options.job.models.checkpoint == str(tmp_path / "cifar10_uncond_50M_500K.pt")
    assert [p["containerPort"] for p in container["ports"]] == [options.port]
    grace = manifest["InferenceService"]["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert grace > options.limits.grace_s


def test_probes_and_metrics_are_routes_of_the_app_and_one_gpu_per_pod(manifest):
    runtime = manifest["ServingRuntime"]["spec"]
    (container,) = runtime["containers"]
    have = routes()
    probes = {name: container[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready" and probes["livenessProbe"]["path"] == \
        "/v2/health/live"
    for probe in probes.values():
        assert probe["path"] in have and probe["port"] == 8080
    assert runtime["annotations"]["prometheus.kserve.io/path"] in have
    assert runtime["annotations"]["prometheus.kserve.io/port"] == "8080"
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    predictor = manifest["InferenceService"]["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
