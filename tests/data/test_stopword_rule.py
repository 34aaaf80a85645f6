"""The stop-word rule: longer text with no function word at all is not prose."""

import pytest

from lmforge.data.document import Document
from lmforge.data.steps.quality import StopwordFilter


def _keep(text: str) -> bool | tuple[bool, str]:
    return StopwordFilter().filter(Document(id="x", text=text, source="t"))


@pytest.mark.parametrize(
    "text",
    [
        "Great phone, fast delivery",  # short reviews may have none
        "The battery lasts two days and the screen is bright enough for me outside in summer.",
        "电池续航很好，物流也很快，推荐购买。客服态度也不错，下次还会再来买的，真心推荐给大家。",
        "好吃",
    ],
)
def test_prose_is_kept(text):
    assert _keep(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "cheap phones discount phones best phones buy phones online free shipping deals today",
        "手机 平板 电脑 耳机 充电器 数据线 保护壳 钢化膜 "
        "移动电源 智能手表 蓝牙音箱 路由器 键盘鼠标 显示器",
    ],
)
def test_keyword_lists_are_dropped(text):
    assert _keep(text) == (False, "no_stopwords")
