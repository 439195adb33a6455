"""The learner's typed configuration (YAML in deploy/configs/, overridable on the command line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilrl.buffers.lerobot_io import LeRobotMapping
from hilrl.buffers.options import opt
from hilrl.learner.td3 import TD3Config
from hilrl.protos.transport import ServerSecurity


@dataclass
class LearnerConfig(ServerSecurity):
    """Everything `hilrl learner` needs; the flags --port, --output-dir and --resume are stable.

    TLS and token options (--tls-cert, --tls-key, --tls-ca, --token-file, --token-env) come from
    ``ServerSecurity``.
    """

    port: int = opt(50051, "TCP port to listen on (0 picks a free one and prints it)")
    host: str = opt("127.0.0.1", "address to bind; anything but loopback needs TLS + token or --insecure")
    output_dir: Path = opt(Path("hilrl-runs/learner"), "directory for the spec, checkpoints and TensorBoard logs")
    resume: bool = opt(False, "continue the run in --output-dir (buffers, weights, version counter, actor records); "
                              "starts fresh, with a warning, when there is none yet")
    insecure: bool = opt(False, "allow a non-loopback address without TLS and a bearer token (not recommended; "
                                "logs a warning)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "training device; auto = cuda when available")
    seed: int | None = opt(0, "random seed (runs are repeatable on CPU); none = random")
    torch_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")
    spec_file: Path | None = opt(None, "observation/action spec JSON; none = adopt the first actor's spec")
    demos: Path | None = opt(None, "seed the human buffer from this demonstration recording (see `hilrl record`); "
                                   "its episodes count towards --demo-episodes; also a LeRobotDataset root "
                                   "(with meta/info.json), mapped by --demo-map.*, see docs/datasets.md")
    demo_map: LeRobotMapping = field(default_factory=LeRobotMapping,
                                     metadata={"help": "--demos LeRobotDataset feature mapping (dataset -> hilrl)"})

    demo_episodes: int = opt(20, "complete human demonstration episodes to wait for before the offline stage (0: "
                                 "start after the first complete episode of any kind, e.g. a residual base's)")
    offline_steps: int = opt(5000, "TD3+BC updates on the human buffer before going online (0 skips)")
    online_bc_weight: float = opt(1.0, "BC weight (on human rows only) during online TD3; 0 = pure TD3 (the "
                                       "seed recipe; collapsed on few demos, see README 'Defaults')")
    online_bc_decay_steps: int = opt(0, "decay the online BC weight linearly to 0 over this many online updates "
                                        "(0 = keep it constant)")
    critic_warmup_steps: int = opt(1000, "first online updates after the offline stage that train only the critic "
                                         "(the actor holds still; not applied without an offline stage); 0 = off, "
                                         "see README 'Defaults'")
    utd_ratio: float = opt(1.0, "online updates per received transition (update-to-data ratio)")
    batch_size: int = opt(256, "minibatch size")
    residual: bool = opt(False, "residual action fine-tuning (learner/residual.py, docs/residual.md): train only a "
                                "bounded correction of the base action the actor sends as observation 'base_action' "
                                "(start the actor with --residual-base)")
    residual_scale: float = opt(0.1, "--residual: bound of the correction, scale * tanh(...), in normalised action "
                                     "units (1 = half of each action's range)")
    chunk: int = opt(1, "action chunk length h (Q-chunking, learner/chunked.py, docs/chunking.md): the policy "
                        "outputs h actions executed open-loop, the critic scores all h; 1 = plain one-step TD3 "
                        "(try 5)")
    human_ratio: float = opt(0.5, "fraction of every online minibatch drawn from the human buffer")
    publish_every: int = opt(500, "publish actor weights every N online updates")
    keep_weight_versions: int = opt(10, "published weight files kept in <output-dir>/weights/ (newest first)")
    keep_checkpoints: int = opt(3, "complete training checkpoints kept in <output-dir>/checkpoints/")
    checkpoint_every: int = opt(5000, "write a full training checkpoint every N updates")
    log_every: int = opt(100, "TensorBoard scalars every N updates")
    wandb_project: str = opt("", "also send the TensorBoard metrics to this Weights & Biases project (empty = off; "
                                 "log in first with `wandb login`, or use --wandb-mode offline)")
    wandb_mode: Literal["online", "offline"] = opt("online", "offline: keep the W&B run under <output-dir>/wandb "
                                                             "to `wandb sync` later")
    plot_q_every: int = opt(5000, "TensorBoard figure of Q along the newest stored episodes every N updates "
                                  "(state policies with single-step critics; 0 = never)")
    human_capacity: int | None = opt(None, "transitions kept in the human buffer; none = auto: 200000 for state "
                                           "specs, camera specs share 40 percent of available memory 2:5 with the "
                                           "policy buffer (logged at adoption)")
    policy_capacity: int | None = opt(None, "transitions kept in the policy buffer; none = auto: 500000 for state "
                                            "specs, see --human-capacity for camera specs")
    hidden: tuple[int, ...] = opt((256, 256), "hidden layer sizes of actor and critics")
    encoder: Literal["resnet10", "resnet18", "convnet"] = opt(
        "convnet", "image encoder of camera policies (the spec's uint8 HxWx3 features): convnet (4 convolutions; "
                   "what docs/camera-policy.md measured, CPU-sized) or resnet10/resnet18 (HIL-SERL's trunk, "
                   "for a GPU); see also --algo.freeze-encoder")
    encoder_pretrain_steps: int = opt(2000, "camera policies with a frozen encoder and no --algo.encoder-weights: "
                                            "behaviour-clone the encoder on the demos for this many steps before "
                                            "the offline stage (learner/encoder_pretrain.py); 0 = keep it random")
    max_message_mb: int = opt(16, "largest gRPC message accepted or sent, in MiB")
    max_actors: int = opt(32, "actors served at once (each holds two streams); more are refused and retry "
                              "(see learner/limits.py)")
    stream_buffer_mb: int = opt(32, "MiB of batches read ahead per actor stream before gRPC flow control holds "
                                    "the actor back")
    algo: TD3Config = field(default_factory=TD3Config, metadata={"help": "TD3 / TD3+BC hyper-parameters"})

