"""The stated contracts: every backend and every training state implements its Protocol, each
checkpoint records its state format, and the export reads a checkpoint by that format."""

import time

import pytest
import torch
from safetensors.torch import save_file

from segtrain import store as st
from segtrain.backends import Backend, load_backend
from segtrain.backends.torch_state import STATE_FILE, TorchState
from segtrain.backends.torch_weights import exported_weights
from segtrain.checkpointing import Evaluated, Snapshots, TrainingState
from segtrain.config import resolve
from segtrain.planning import Segment
from segtrain.runner import RunPaths, run_segment
from segtrain.training import prepare_training

from conftest import MLP, REPO

KERAS_TASK = REPO / "examples" / "digits_cnn_keras.py"


def test_the_backends_and_the_states_implement_their_contracts():
    run = resolve({"runs": {"r": {**MLP, "total_steps": 20}}}, base=REPO)["r"]
    backend = prepare_training(run).backend
    assert isinstance(backend, Backend) and isinstance(backend, Snapshots)
    assert isinstance(TorchState({"model": torch.nn.Linear(2, 2)}), TrainingState)
    assert isinstance(TorchState({}), Evaluated)
    for framework in ("torch", "keras"):
        cls = load_backend(framework)
        for name in ("state_format", "verified_reads", "steps_per_call", "EXPORTS", "export", "train_step"):
            assert hasattr(cls, name), f"{framework} backend lacks {name}"
    from segtrain.huggingface import _TrainerState
    from segtrain.lightning import _LightningState

    for state in (_LightningState(), _TrainerState()):
        assert isinstance(state, TrainingState), type(state).__name__
    assert (_LightningState.state_format, _TrainerState.state_format) == ("lightning", "huggingface")


def test_each_checkpoint_records_the_format_the_export_reads_it_by(tmp_path):
    run = resolve({"runs": {"r": {**MLP, "total_steps": 20}}}, base=REPO)["r"]
    paths = RunPaths(tmp_path / "r")
    # a job that starts now (a job's clock otherwise starts with its process: this one is the test worker's)
    run_segment(run, Segment(index=0, start=0, end=20, interval=10, time_limit=600), paths, None,
                paths.segment_dir(0), job_start=time.monotonic())
    for step in (10, 20):
        assert st.read_manifest(paths.store / st.step_dir_name(step))["state_format"] == "torch"
    weights = exported_weights(paths.store / st.step_dir_name(20))
    assert set(weights) == set(torch.load(paths.store / st.step_dir_name(20) / STATE_FILE,
                                          weights_only=True)["model"])


def test_the_export_follows_the_recorded_format_not_the_file_names(tmp_path):
    """A Hugging Face checkpoint that also holds a stray state.pt is read as what it says it is;
    a format the PyTorch export does not know is refused with the formats it reads."""
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
    torch.save({"model": {"other": torch.zeros(1)}}, folder / STATE_FILE)
    st.write_json_atomic(folder / st.MANIFEST, {"step": 5, "files": {}, "state_format": "huggingface"})
    assert set(exported_weights(folder)) == {"w"}
    st.write_json_atomic(folder / st.MANIFEST, {"step": 5, "files": {}, "state_format": "keras"})
    with pytest.raises(ValueError, match="'keras' checkpoint, which the PyTorch export cannot read"):
        exported_weights(folder)


class _Tied(torch.nn.Module):
    """A language model's shape: the output layer is the embedding (one weight under two names)."""

    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(11, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.wte.weight


@pytest.mark.parametrize("written", ["write_state", "snapshot"])
def test_tied_weights_export_as_safetensors_save_model_writes_them_and_stay_tied_in_the_pt(tmp_path, written):
    from safetensors.torch import load_file, load_model, save_model

    torch.manual_seed(0)
    model = _Tied()
    state = TorchState({"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)})
    folder = tmp_path / "ckpt"
    folder.mkdir()
    # a synchronous save, or a background one (host copies, which must keep the two names on one copy)
    state.write_state(folder, {"step": 1}) if written == "write_state" else state.snapshot({"step": 1}).write(folder)
    st.write_json_atomic(folder / st.MANIFEST, {"step": 1, "files": {}, "state_format": "torch"})
    out = {"pt": tmp_path / "model.pt", "safetensors": tmp_path / "model.safetensors"}
    load_backend("torch").export(None, folder, out)

    pt = torch.load(out["pt"], weights_only=True)
    assert pt["lm_head.weight"].data_ptr() == pt["wte.weight"].data_ptr()  # still one tensor
    again = _Tied()
    again.load_state_dict(pt)
    assert again.lm_head.weight is again.wte.weight and torch.equal(again.wte.weight, model.wte.weight)

    save_model(model, str(tmp_path / "theirs.safetensors"))  # what safetensors itself writes for the model
    assert out["safetensors"].read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    assert set(load_file(str(out["safetensors"]))) == {"lm_head.weight", "mid.weight", "mid.bias"}  # one of the two
    loaded = _Tied()
    missing, unexpected = load_model(loaded, str(out["safetensors"]))
    assert not missing and not unexpected
    assert loaded.lm_head.weight is loaded.wte.weight and torch.equal(loaded.wte.weight, model.wte.weight)


def test_what_users_call_is_documented_where_help_looks():
    """`help(segtrain.session)` and an editor's hover show the API's docstring (it once sat after
    a `global` statement, where Python does not take it as one)."""
    import inspect

    import segtrain
    from segtrain.script import Session

    public = [segtrain, segtrain.session, Session, *(getattr(Session, n) for n in dir(Session) if not n.startswith("_"))]
    undocumented = [getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj))) for obj in public
                    if not inspect.getdoc(obj) and (inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj))]
    assert not undocumented, f"no docstring: {undocumented}"


def _package_imports() -> dict[str, set[str]]:
    """segtrain's modules and the segtrain modules each imports, anywhere in it (inside functions too:
    a cycle hidden in a function is still a cycle)."""
    import ast

    root = REPO / "segtrain"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (base, node.module or "") if p)
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    edges[name].add(target)
    return edges


def test_the_package_has_no_import_cycle_counting_imports_inside_functions():
    edges = _package_imports()
    assert len(edges) > 40 and "segtrain.store" in edges["segtrain.runner"]  # it reads the package
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("an import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_job_store_plan_and_world_load_no_framework():
    """The order of events, the store, the plan and the world are framework-free: importing them
    loads no PyTorch, TensorFlow, Keras, Lightning or Transformers (a framework comes in through
    a backend or an integration, when a job needs it)."""
    import subprocess
    import sys

    modules = ["runner", "store", "resume", "stopping", "lifecycle", "planning", "plan", "plan_text", "settings",
               "config", "world", "attempts", "layout", "measure", "check", "pipeline"]
    code = ("import sys\n" + "".join(f"import segtrain.{m}\n" for m in modules) +
            "print(sorted(f for f in ('torch', 'tensorflow', 'keras', 'lightning', 'transformers') if f in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
