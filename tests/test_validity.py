import pytest
import torch

from benchmark.core.errors import AttackValidityError
from benchmark.run.validity import check_adversarial


def test_accepts_points_on_the_ball():
    x = torch.full((2, 3, 4, 4), 0.5)
    check_adversarial(x + 8 / 255, x, 8 / 255, "ok")


@pytest.mark.parametrize("bad, message", [
    (lambda x: x + 9 / 255, "left the linf ball"),
    (lambda x: x * 0 + 1.5, r"left \[0, 1\]"),
    (lambda x: x * float("nan"), "non-finite"),
])
def test_refuses_and_names_the_attack(bad, message):
    x = torch.full((2, 3, 4, 4), 0.5)
    with pytest.raises(AttackValidityError, match=f"attack 'evil'.*{message}|{message}"):
        check_adversarial(bad(x), x, 8 / 255, "evil")
