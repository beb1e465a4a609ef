"""bench/step.py's --winograd: the mode every convolution takes for the run. No assertion on
speed."""
import pytest

from bench import step
from layers.conv import Conv2D


@pytest.fixture
def restore_winograd():
    yield
    Conv2D.winograd = "auto"


def test_winograd_mode_for_the_run(capsys, restore_winograd):
    step.main(["--model", "resnet20", "--width", "0.25", "--batch", "2", "--steps", "1",
               "--threads", "1", "--winograd", "never", "--malloc-defaults"])
    assert Conv2D.winograd == "never"
    assert "img/s" in capsys.readouterr().out


def test_unknown_winograd_mode_is_refused(capsys):
    with pytest.raises(SystemExit):
        step.parse(["--winograd", "sometimes"])
    err = capsys.readouterr().err
    assert "--winograd: invalid choice: 'sometimes'" in err and "always" in err
