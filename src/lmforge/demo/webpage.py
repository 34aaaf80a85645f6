"""Render a review as a shop's HTML page: the review sits among navigation, a cookie banner,
share buttons, related links and a footer, so a reader must extract the main text.

The review body is the only content of `<article class="review">` (one `<p>` per line of the
text); the id and label are `<meta name="id">` and `<meta name="label">` in the head.
"""

from __future__ import annotations

import random
from html import escape

from lmforge.demo import bank_en, bank_misc, bank_zh
from lmforge.demo.doc import CorpusDoc

_PRODUCTS = {
    lang: tuple(p for d in bank.DOMAINS for p in d.products)
    for lang, bank in (("en", bank_en), ("zh", bank_zh))
}


def _links(items: tuple[str, ...], prefix: str) -> list[str]:
    return [f'<a href="/{prefix}/{i}">{escape(item)}</a>' for i, item in enumerate(items)]


def render_page(rng: random.Random, doc: CorpusDoc) -> str:
    site = bank_misc.SITE[doc.site_lang]
    site_name = rng.choice(site["name"])
    name = escape(site_name)
    title = escape(site["title"].format(p=doc.product))
    nav = "".join(f"<li>{link}</li>" for link in _links(site["nav"], "c"))
    # Related-review titles carry opinion words of their own: a reader that keeps them
    # mislabels the page.
    related = []
    for i, template in enumerate(rng.sample(site["related"], 3)):
        product = doc.product if i == 0 else rng.choice(_PRODUCTS[doc.site_lang])
        href = f"/r/{rng.randrange(10**6):06d}"
        related.append(f'<li><a href="{href}">{escape(template.format(p=product))}</a></li>')
    share = " ".join(f'<a class="share" href="#">{escape(s)}</a>' for s in site["share"])
    footer = " | ".join(_links(site["footer"], "about"))
    body = "\n".join(f"<p>{escape(line, quote=False)}</p>" for line in doc.text.split("\n"))
    crumbs = (
        f'<a href="/">{escape(site["home"])}</a> &rsaquo; '
        f'<a href="/c">{escape(doc.category)}</a> &rsaquo; {escape(doc.product)}'
    )
    stamp = f'<time datetime="{doc.created_at}">{doc.created_at[:10]}</time>'
    return f"""<!DOCTYPE html>
<html lang="{doc.site_lang}">
<head>
<meta charset="utf-8">
<meta name="id" content="{escape(doc.id)}">
<meta name="label" content="{escape(doc.label)}">
<title>{title} | {name}</title>
<link rel="stylesheet" href="/static/site.css">
<script>window.dataLayer = window.dataLayer || [];</script>
</head>
<body>
<div id="cookie-banner" class="cookie-banner"><p>{escape(site["cookie"])}</p>
<button>{escape(site["accept"])}</button> <button>{escape(site["settings"])}</button></div>
<header class="site-header"><a class="logo" href="/">{name}</a>
<nav class="main-nav"><ul>{nav}</ul></nav></header>
<nav class="breadcrumb">{crumbs}</nav>
<main>
<h1 class="product-title">{title}</h1>
<div class="review-meta"><span class="author">{escape(doc.user)}</span> {stamp}</div>
<article class="review" itemprop="reviewBody">
{body}
</article>
<div class="share-buttons">{share}</div>
<div class="helpful">{escape(site["helpful"])} <button>+1</button> <button>-1</button></div>
<aside class="related-links"><h2>{escape(site["related_heading"])}</h2>
<ul>{"".join(related)}</ul></aside>
</main>
<footer class="site-footer"><p>{escape(site["newsletter"])}</p><nav>{footer}</nav>
<p>{escape(site["copyright"].format(site=site_name))}</p></footer>
</body>
</html>
"""
