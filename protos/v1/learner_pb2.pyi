from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_WAITING_FOR_DEMOS: _ClassVar[Stage]
    STAGE_OFFLINE: _ClassVar[Stage]
    STAGE_ONLINE: _ClassVar[Stage]
STAGE_UNSPECIFIED: Stage
STAGE_WAITING_FOR_DEMOS: Stage
STAGE_OFFLINE: Stage
STAGE_ONLINE: Stage

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("name", "dtype", "shape", "low", "high")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ...) -> None: ...

class Spec(_message.Message):
    __slots__ = ("observation", "action")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    observation: _containers.RepeatedCompositeFieldContainer[Feature]
    action: Feature
    def __init__(self, observation: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., action: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("protocol_version", "actor_id", "spec", "max_message_bytes", "instance_id", "session_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    actor_id: str
    spec: Spec
    max_message_bytes: int
    instance_id: str
    session_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., actor_id: _Optional[str] = ..., spec: _Optional[_Union[Spec, _Mapping]] = ..., max_message_bytes: _Optional[int] = ..., instance_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("protocol_version", "run_id", "policy_config_json", "weight_version", "last_acked_seq", "stage", "max_message_bytes")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    run_id: str
    policy_config_json: str
    weight_version: int
    last_acked_seq: int
    stage: Stage
    max_message_bytes: int
    def __init__(self, protocol_version: _Optional[int] = ..., run_id: _Optional[str] = ..., policy_config_json: _Optional[str] = ..., weight_version: _Optional[int] = ..., last_acked_seq: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class Transition(_message.Message):
    __slots__ = ("observation", "action", "reward", "terminated", "truncated", "is_intervention", "episode", "step", "final_observation")
    class ObservationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class FinalObservationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    IS_INTERVENTION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FINAL_OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    observation: _containers.MessageMap[str, Tensor]
    action: Tensor
    reward: float
    terminated: bool
    truncated: bool
    is_intervention: bool
    episode: int
    step: int
    final_observation: _containers.MessageMap[str, Tensor]
    def __init__(self, observation: _Optional[_Mapping[str, Tensor]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., reward: _Optional[float] = ..., terminated: bool = ..., truncated: bool = ..., is_intervention: bool = ..., episode: _Optional[int] = ..., step: _Optional[int] = ..., final_observation: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class DiscardEpisode(_message.Message):
    __slots__ = ("episode",)
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    episode: int
    def __init__(self, episode: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("transition", "discard")
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    transition: Transition
    discard: DiscardEpisode
    def __init__(self, transition: _Optional[_Union[Transition, _Mapping]] = ..., discard: _Optional[_Union[DiscardEpisode, _Mapping]] = ...) -> None: ...

class TransitionBatch(_message.Message):
    __slots__ = ("actor_id", "seq", "items", "weight_version_applied", "loop")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    seq: int
    items: _containers.RepeatedCompositeFieldContainer[Item]
    weight_version_applied: int
    loop: LoopStats
    def __init__(self, actor_id: _Optional[str] = ..., seq: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., weight_version_applied: _Optional[int] = ..., loop: _Optional[_Union[LoopStats, _Mapping]] = ...) -> None: ...

class LoopStats(_message.Message):
    __slots__ = ("period_p50_ms", "period_p99_ms", "ticks", "overruns", "watchdog_holds", "safety_clamps")
    PERIOD_P50_MS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_P99_MS_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    OVERRUNS_FIELD_NUMBER: _ClassVar[int]
    WATCHDOG_HOLDS_FIELD_NUMBER: _ClassVar[int]
    SAFETY_CLAMPS_FIELD_NUMBER: _ClassVar[int]
    period_p50_ms: float
    period_p99_ms: float
    ticks: int
    overruns: int
    watchdog_holds: int
    safety_clamps: int
    def __init__(self, period_p50_ms: _Optional[float] = ..., period_p99_ms: _Optional[float] = ..., ticks: _Optional[int] = ..., overruns: _Optional[int] = ..., watchdog_holds: _Optional[int] = ..., safety_clamps: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., duplicate: bool = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("actor_id", "have_version")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    have_version: int
    def __init__(self, actor_id: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("version", "sha256", "total_size", "offset", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha256: str
    total_size: int
    offset: int
    data: bytes
    def __init__(self, version: _Optional[int] = ..., sha256: _Optional[str] = ..., total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LearnerEvent(_message.Message):
    __slots__ = ("stage", "weights")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    weights: WeightsChunk
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., weights: _Optional[_Union[WeightsChunk, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BufferStatus(_message.Message):
    __slots__ = ("size", "capacity")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    size: int
    capacity: int
    def __init__(self, size: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class ActorStatus(_message.Message):
    __slots__ = ("id", "transitions_received", "last_acked_seq", "weight_version_applied", "policy_lag", "connected", "episodes", "interventions", "loop_period_p50_ms", "loop_period_p99_ms", "overruns", "watchdog_holds", "safety_clamps")
    ID_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_APPLIED_FIELD_NUMBER: _ClassVar[int]
    POLICY_LAG_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    LOOP_PERIOD_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LOOP_PERIOD_P99_MS_FIELD_NUMBER: _ClassVar[int]
    OVERRUNS_FIELD_NUMBER: _ClassVar[int]
    WATCHDOG_HOLDS_FIELD_NUMBER: _ClassVar[int]
    SAFETY_CLAMPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    transitions_received: int
    last_acked_seq: int
    weight_version_applied: int
    policy_lag: int
    connected: bool
    episodes: int
    interventions: int
    loop_period_p50_ms: float
    loop_period_p99_ms: float
    overruns: int
    watchdog_holds: int
    safety_clamps: int
    def __init__(self, id: _Optional[str] = ..., transitions_received: _Optional[int] = ..., last_acked_seq: _Optional[int] = ..., weight_version_applied: _Optional[int] = ..., policy_lag: _Optional[int] = ..., connected: bool = ..., episodes: _Optional[int] = ..., interventions: _Optional[int] = ..., loop_period_p50_ms: _Optional[float] = ..., loop_period_p99_ms: _Optional[float] = ..., overruns: _Optional[int] = ..., watchdog_holds: _Optional[int] = ..., safety_clamps: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("protocol_version", "run_id", "stage", "learner_step", "offline_steps", "weight_version", "human", "policy", "actors", "demo_episodes", "demo_episodes_needed", "store_problem", "ingest_backlog_batches", "ingest_backlog_bytes")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    LEARNER_STEP_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HUMAN_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    DEMO_EPISODES_FIELD_NUMBER: _ClassVar[int]
    DEMO_EPISODES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    STORE_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    INGEST_BACKLOG_BATCHES_FIELD_NUMBER: _ClassVar[int]
    INGEST_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    run_id: str
    stage: Stage
    learner_step: int
    offline_steps: int
    weight_version: int
    human: BufferStatus
    policy: BufferStatus
    actors: _containers.RepeatedCompositeFieldContainer[ActorStatus]
    demo_episodes: int
    demo_episodes_needed: int
    store_problem: str
    ingest_backlog_batches: int
    ingest_backlog_bytes: int
    def __init__(self, protocol_version: _Optional[int] = ..., run_id: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., learner_step: _Optional[int] = ..., offline_steps: _Optional[int] = ..., weight_version: _Optional[int] = ..., human: _Optional[_Union[BufferStatus, _Mapping]] = ..., policy: _Optional[_Union[BufferStatus, _Mapping]] = ..., actors: _Optional[_Iterable[_Union[ActorStatus, _Mapping]]] = ..., demo_episodes: _Optional[int] = ..., demo_episodes_needed: _Optional[int] = ..., store_problem: _Optional[str] = ..., ingest_backlog_batches: _Optional[int] = ..., ingest_backlog_bytes: _Optional[int] = ...) -> None: ...
