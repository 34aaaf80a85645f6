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
        # telegraphic, no function word, but short: still a review
        "good fun , good action , good acting , good dialogue , good pace , good cinematography .",
        "外观精美，轻触键操作方便，官方网站软件资料下载更新及时。360发货速度快，口碑较好。",
        "电池续航很好，物流也很快，推荐购买。客服态度也不错，下次还会再来买的，真心推荐给大家。",
        "好吃",
    ],
)
def test_prose_is_kept(text):
    assert _keep(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "cheap phones discount phones best phones buy phones online free shipping deals today "
        "tablets laptops chargers cables cases screen protectors smart watches speakers "
        "routers keyboards monitors cameras",
        "手机 平板 电脑 耳机 充电器 数据线 保护壳 钢化膜 移动电源 智能手表 蓝牙音箱 路由器 "
        "键盘鼠标 显示器 摄像头 打印机 投影仪 扫描仪 硬盘 内存条 显卡 主板 电源 机箱 散热器 "
        "网线 交换机 音响 麦克风 游戏手柄 电子书 平衡车 无人机 相机 镜头 三脚架 稳定器 补光灯",
    ],
)
def test_keyword_lists_are_dropped(text):
    assert _keep(text) == (False, "no_stopwords")
