"""The choice enums parse their values and refuse anything else in one line naming the choices."""

import pytest

from densepure.diffusion.smoothing import Mode
from densepure.engine.backends.select import BackendKind
from densepure.errors import ConfigError
from densepure.kernels import CompileMode, KernelChoice
from densepure.models.classifiers import ResizeChoice
from densepure.precision import Precision
from densepure.stats.sequential import SequentialMethod

CHOICES = [(Mode, "mode"), (BackendKind, "backend"), (Precision, "precision"), (ResizeChoice, "resize"),
           (KernelChoice, "kernels"), (CompileMode, "compile mode"), (SequentialMethod, "sequential method")]


@pytest.mark.parametrize("cls,what", CHOICES)
def test_values_and_members_parse_to_members(cls, what):
    for member in cls:
        assert cls.parse(member.value) is member and cls.parse(member) is member


@pytest.mark.parametrize("cls,what", CHOICES)
def test_anything_else_is_one_line_naming_the_choices(cls, what):
    with pytest.raises(ConfigError) as err:
        cls.parse("no-such-choice")
    message = str(err.value)
    assert message.startswith(f"{what} must be one of ") and message.endswith(", got 'no-such-choice'")
    assert all(member.value in message for member in cls) and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_the_hint_is_said_and_settings_are_not_members():
    with pytest.raises(ConfigError, match=r"\(modes with their own CUDA graphs cannot run inside the engine's\)"):
        CompileMode.parse("reduce-overhead")
    assert len(Mode) == 4 and Mode._what_ == "mode"
