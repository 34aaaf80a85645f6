"""Everything in the corpus that is not a review: other languages, junk, spam, page chrome."""

from __future__ import annotations

from lmforge.demo.lexicon import split

# Product reviews in languages the demo task does not cover (the `wrong_language` kind).
FOREIGN: dict[str, tuple[str, ...]] = {
    "de": split(
        "Der Kopfhörer kam nach drei Tagen an und funktioniert einwandfrei."
        "|Leider ist der Wasserkocher nach einer Woche kaputt gegangen."
        "|Die Qualität des Stoffes ist für den Preis völlig in Ordnung."
        "|Das Hotelzimmer war sauber, aber das Frühstück war enttäuschend."
        "|Der Kundenservice hat mein Problem schnell gelöst."
        "|Die Lieferung hat leider über eine Stunde gedauert."
    ),
    "fr": split(
        "Le casque est arrivé rapidement et le son est excellent."
        "|La veste taille un peu petit, prenez une taille au-dessus."
        "|Le service client ne répond jamais aux courriels."
        "|La chambre était spacieuse et le personnel très accueillant."
        "|La livraison était froide et en retard de quarante minutes."
        "|Je suis très satisfait de cette friteuse sans huile."
    ),
    "es": split(
        "La chaqueta llegó a tiempo y la tela es de buena calidad."
        "|El cargador dejó de funcionar después de dos semanas."
        "|El hotel está muy bien ubicado, cerca del centro histórico."
        "|La comida llegó fría y el pedido estaba incompleto."
        "|El servicio de atención al cliente fue rápido y amable."
        "|No recomiendo esta aspiradora, hace demasiado ruido."
    ),
    "ru": split(
        "Наушники пришли быстро, звук отличный."
        "|Куртка порвалась после первой стирки."
        "|Номер в отеле был чистым и тихим."
        "|Доставка опоздала на целый час, еда остыла."
        "|Служба поддержки так и не решила мою проблему."
        "|Чайник закипает очень быстро, я доволен покупкой."
    ),
    "ja": split(
        "このイヤホンは音質がとても良くて満足しています。"
        "|サイズが小さすぎて返品しました。"
        "|ホテルのスタッフはとても親切でした。"
        "|配達が遅くて料理が冷めていました。"
        "|サポートの対応が早くて助かりました。"
        "|この炊飯器はご飯がふっくら炊けます。"
    ),
    "ko": split(
        "배송이 빨라서 좋았어요. 음질도 만족합니다."
        "|사이즈가 너무 작아서 반품했어요."
        "|호텔 직원들이 정말 친절했습니다."
        "|음식이 식어서 도착했고 양도 적었어요."
        "|고객센터 답변이 너무 늦어요."
        "|청소기 흡입력이 좋고 소음도 적어요."
    ),
}

# Fragments of page chrome and markup (the `html_junk` kind): no review text at all.
JUNK = {
    "en": (
        "Home | Shop | Deals | Account | Cart",
        "Accept all cookies Manage preferences",
        "Share on Facebook Share on Twitter Pin it Email",
        '<div class="ad-slot" data-size="300x250"></div>',
        "&nbsp;&nbsp;<br/><br/>",
        "Loading... Please enable JavaScript to view the comments.",
        "Related: Top 10 deals | Gift guide | Clearance",
        '<script>window.dataLayer.push({"event": "view"});</script>',
        "Sign in to see your order history. Forgot password?",
        "© 2024 All rights reserved. Privacy | Terms | Cookies",
    ),
    "zh": (
        "首页 | 商城 | 优惠 | 我的订单 | 购物车",
        "接受所有Cookie 管理偏好设置",
        "分享到微信 分享到微博 复制链接",
        '<div class="ad-banner"></div>',
        "&nbsp;<br/><br/>",
        "正在加载评论...请开启JavaScript",
        "猜你喜欢：热销榜 | 新品推荐 | 清仓特卖",
        "登录后查看全部评价 忘记密码？",
        "© 2024 版权所有 隐私政策 | 用户协议",
        '<span class="icon-star"></span><span class="icon-star"></span>',
    ),
}

SPAM = {
    "en": split(
        "Buy now! Best price at http://cheap-deals.example.com"
        "|CLICK HERE for free gift cards www.win-prizes.example.net"
        "|Follow me for daily deals!!!"
        "|Limited offer 90% OFF visit bit.ly/xx-deal"
        "|Earn $500 a day from home, message me"
    ),
    "zh": split(
        "加微信领红包|点击链接领取优惠券 http://t.example.cn/x8K2|全场一折 速来抢购"
        "|关注店铺领取福利|兼职刷单日赚五百"
    ),
}
# Spam that carries a contact: the identifier goes into {x} and becomes a marker.
SPAM_CONTACT = {
    "en": split("Text {x} for cheap followers!|Wholesale prices, call {x}|Email {x} for deals"),
    "zh": split("加V信{x}领取福利|代购请联系{x}|刷单返现联系{x}"),
}

SHORT = {
    "en": ("", "ok", "Good", "meh", "k", "👍", "...", "A+", "nice", "?"),
    "zh": ("", "好", "还行", "差评", "好评！", "嗯", "一般", "👍👍", "。", "可以"),
}

KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890")
SYMBOLS = "#$%^&*~@+=|/_-!?"

CHANNELS = {
    "en": ("app", "website", "phone", "email", "store", "live chat"),
    "zh": ("APP", "官网", "电话", "邮件", "门店", "在线客服", "小程序"),
}
REGIONS = {
    "en": ("US-East", "US-West", "UK", "EU-Central", "APAC", "Canada"),
    "zh": ("华东", "华南", "华北", "华中", "西南", "西北", "东北"),
}
NICKS = {
    "en": split("alex|sam_k|jenny|mark.t|nina|owen|priya|lucas|emma_w|dan"),
    "zh": split("小鱼儿|阿杰|吃货小王|北漂一族|晴天|老李|橙子|木木|大熊|糖糖"),
}

# The web source's page chrome, per site language.
SITE = {
    "en": {
        "name": split("ShopTalk Reviews|GadgetVoice|ReviewHub"),
        "nav": split("Home|Electronics|Food|Travel|Fashion|Home & Kitchen|Deals|Sign in"),
        "cookie": "We use cookies to improve your experience and to show you personalised ads. "
        "By continuing to browse you agree to our cookie policy.",
        "accept": "Accept all",
        "settings": "Cookie settings",
        "share": split("Share|Tweet|Pin it|Copy link"),
        "helpful": "Was this review helpful?",
        "related_heading": "Related reviews",
        "related": split(
            "Why I returned my {p} after a week|The {p} is the best buy of the year"
            "|{p} vs the competition: an honest comparison|5 things I hate about the {p}"
            "|Is the {p} worth it? A long-term review|My {p} broke, here is what support said"
        ),
        "newsletter": "Subscribe to our newsletter for the best deals every week.",
        "footer": split("About us|Careers|Privacy|Terms of use|Contact|Advertise"),
        "copyright": "© 2024 {site}. All rights reserved.",
        "home": "Home",
        "title": "{p} review",
    },
    "zh": {
        "name": split("好物点评网|口碑说|值不值"),
        "nav": split("首页|数码|美食|旅行|服饰|家居|优惠|登录"),
        "cookie": "本网站使用Cookie来提升您的浏览体验并展示个性化广告，"
        "继续浏览即表示您同意我们的Cookie政策。",
        "accept": "全部接受",
        "settings": "Cookie设置",
        "share": split("分享到微信|分享到微博|复制链接|收藏"),
        "helpful": "这条评价对您有帮助吗？",
        "related_heading": "相关评价",
        "related": split(
            "用了一周就退货的{p}|年度最值{p}推荐|{p}横评：真实对比|吐槽{p}的五个缺点"
            "|{p}到底值不值得买？长期使用报告|{p}坏了，客服是这么说的"
        ),
        "newsletter": "订阅我们的周刊，每周获取最新优惠信息。",
        "footer": split("关于我们|加入我们|隐私政策|用户协议|联系我们|广告合作"),
        "copyright": "© 2024 {site} 版权所有",
        "home": "首页",
        "title": "{p}评测",
    },
}
