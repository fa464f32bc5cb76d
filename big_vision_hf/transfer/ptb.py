"""Stanford's ``PTBTokenizer`` as pycocoevalcap runs it, in pure Python.

The captioning evaluators (big_vision ``evaluators/proj/paligemma/transfers/coco_caption.py`` -> pycocoevalcap 1.2
``tokenizer/ptbtokenizer.py``) run ``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer
-preserveLines -lowerCase`` on every caption and drop the tokens in ``PTB_PUNCTUATIONS``. This module reproduces
that jar: it is a port of the rules of CoreNLP 3.4.1's JFlex specification ``PTBLexer.flex`` (tag ``v3.4.1``; the
options pycocoevalcap gets are the defaults: PTB3 escaping, latex quotes, ``untokenizable=firstDelete``) with
JFlex's matching discipline:

- at each position every rule is tried and the LONGEST match wins, the text of a trailing context (``r1/r2``)
  counted in the length; equal lengths go to the rule written first;
- literals are case-insensitive (``%caseless``), character classes are not;
- actions push text back (``cannot`` -> ``can`` + ``not``; an abbreviation before a capitalised word is returned
  with its period and the period again);
- Java strings are UTF-16: a character outside the BMP is two code units, which no rule but the URL / e-mail
  classes accept, so it is dropped as untokenizable.

Tokens are then lowercased (``-lowerCase``: ``toLowerCase(Locale.ENGLISH)``). :func:`ptb_tokenize` returns what
pycocoevalcap keeps for one caption: the tokens not in ``PTB_PUNCTUATIONS``, joined by spaces.

Checked against the jar on every caption of ``/work/shared/data/ptb/`` (80,658 COCO val2014 captions) and on
hand-made OCR-, figure- and app-style strings (``tests/test_transfer_ptb.py``).
"""

from __future__ import annotations

import functools
import unicodedata

import regex

__all__ = ["PTB_PUNCTUATIONS", "ptb_tokenize", "ptb_tokenize_lines", "ptb_tokens"]

# pycocoevalcap ptbtokenizer.py PUNCTUATIONS. They are compared AFTER ``-lowerCase``, so the bracket escapes
# ("-lrb-", "-rrb-", "-lsb-", ...) are never removed: pycocoevalcap keeps them, and so do we.
PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                              ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# ---------------------------------------------------------------------------------------------------------
# The macros of PTBLexer.flex (v3.4.1), as `regex` patterns. (?i:...) marks the caseless literals.
# ---------------------------------------------------------------------------------------------------------

_SGML = (r"""<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*"""
         r"""|[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>""")
_SPMDASH = r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"
_SPAMP = r"(?i:&amp;)"
_SPPUNC = r"&(?:(?i:HT|TL|UR|LR|QC|QL|QR|odq|cdq)|#[0-9]+);"
_SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NEWLINE = r"(?:\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_SPACENLS = rf"(?:{_SPACENL})+"
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|\p{{Lu}}|{_SGML})"
_DIGIT = r"[\p{Nd}\u07C0-\u07C9]"
_DATE = rf"{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{2,4}}"
_NUM = rf"(?:{_DIGIT}+|{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+)"
_NUMBER = rf"[\-+]?{_NUM}"
_SUBSUPNUM = r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"
_FRAC = rf"(?:{_DIGIT}{{1,4}}[\- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}"
_FRAC2 = r"[\u00BC\u00BD\u00BE\u2153-\u215E]"
_DOLSIGN = r"[A-Z]*\$|#"
_DOLSIGN2 = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_LETTER_CLASS = (
    r"[\p{L}\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385"
    r"\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF"
    r"\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF"
    r"\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E"
    r"\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3"
    r"\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD"
    r"\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
_LETTER = rf"(?:{_LETTER_CLASS}|{_SPLET})"
_LD = rf"(?:{_LETTER}|{_DIGIT})"
_WORD = rf"{_LETTER}{_LD}*(?:[.!?]{_LETTER}{_LD}*)*"
_FILENAME_EXT = (r"(?i:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|"
                 r"php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)")
_FILENAME = rf"{_LD}+(?:\.{_LD}+)*\.{_FILENAME_EXT}"
_APOS = r"(?:['\u0092\u2019]|(?i:&apos;))"
_APOSETC = rf"(?:{_APOS}|[`\u0091\u2018\u201B])"
_HYPHEN = r"[\-_\u058A\u2010\u2011]"
_LD_U = r"[\p{L}\p{Nd}]"  # [:letter:]|[:digit:] (not the LETTER / DIGIT macros)
_THING_PART = rf"(?:[dDoOlL]{_APOSETC}{_LD_U})?{_LD_U}+"
_THING = rf"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*"
_THINGA = rf"[A-Z]+(?:(?:[+&]|{_SPAMP})[A-Z]+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO_SPECIAL = r"(?i:(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r))"
_ACRO = rf"(?:[A-Za-z](?:\.[A-Za-z])*|{_ACRO_SPECIAL})"
_ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{_ACRO_SPECIAL})"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO2}\.))+"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"(?i:n){_APOSETC}(?i:t)"
_APOWORD = (rf"{_APOS}(?i:n){_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}|{_APOS}(?i:em)"
            rf"|[A-HJ-XZn]{_APOSETC}\p{{L}}{{2}}\p{{L}}*|{_APOS}[2-9]0(?i:s)|{_APOS}(?i:till?)"
            rf"|\p{{L}}\p{{L}}*[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]\p{{L}}*|{_APOS}(?i:cause)"
            r"|(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"
            rf"|(?i:o){_APOSETC}(?i:o)")
_APOWORD2 = rf"(?i:y){_APOS}"
_FULLURL = r"""(?i:https?)://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},\-]"""
_LIKELYURL = (r"""(?:(?:(?i:www)\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"""
              r"""|(?:(?:[^ \t\n\f\r"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu)))"""  # ",-_" is a range, as in the flex
              r"""(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},\-])?""")
_EMAIL = (r"""(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00A0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00A0]+\.)*"""
          r"""[^ \t\n\f\r"<>|(){}.\u00A0]+(?:(?i:&gt;)|>)?""")
_TWITTER = rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+"
_ABMONTH = r"(?i:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)"
_ABDAYS = r"(?i:mon|tue|tues|wed|thu|thurs|fri)"
_ABSTATE = (r"(?i:ala|ariz)|A(?i:z)|A(?i:rk)|(?i:calif|colo|conn|ct|dak)|D(?i:el)|(?i:fla|ga)|I(?i:ll)"
            r"|(?i:ind|kans?|ky)|L(?i:a)|M(?i:ass)|(?i:md|mich|minn)|M(?i:iss)|(?i:mo|mont|neb|nev|okla)|O(?i:re)"
            r"|P(?i:a)|(?i:penn|tenn)|T(?i:ex)|(?i:va|vt)|W(?i:ash)|(?i:wisc?|wyo)")
_ABCOMP = r"(?i:inc|cos?|corp)|(?i:pp?t)[ye](?i:s?)|(?i:ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys)"
_ABNUM = r"(?i:tel|est|ext|sq)"
_ABPTIT = r"(?i:jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq)"
_ABBREV1 = (rf"(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|(?i:etc|al|seq|bldg))\.")
_ABTITLE = (r"(?i:mr|mrs|ms)|M(?i:iss)|(?i:drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj"
            r"|sgt|cpl|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc"
            r"|ens|insp|mlle|mme|msgr|sfc)")
_ABCOMP2 = r"(?i:invt|elec|natl)|(?i:m)[ft](?i:g)|(?i:dept)"
_ABBREV4 = rf"(?:{_ABTITLE}|(?i:vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph)|{_ACRO}|{_ABCOMP2})"
_ABBREV2 = rf"{_ABBREV4}\."
_ACRONYM = rf"{_ACRO}\."
_ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."
_PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])"
          r"[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
_LDOTS = r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
_INSENTP = r"[,;:\u3001]"
_QUOTES = (rf"{_APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A"
           r"\u00AB\u00BB]{1,2}")
_DBLQUOT = r'"|(?i:&quot;)'
_TBSPEC = (rf"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-)|(?i:s)(?:&|{_SPAMP})(?i:p-500)"
           rf"|(?i:s)(?:&|{_SPAMP})(?i:ls)|(?i:cap){_APOS}(?i:n)|(?i:c){_APOS}(?i:est)")
_TBSPEC2 = rf"{_APOS}[0-9][0-9]"
_SMILEY = r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"
_ASIANSMILEY = (r"[\^x=~<>]\.\[\^(?i:x)=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
                r"|\([\^x=~<>']-[\^x=~<>'`]\)")
_MISCSYMBOL = (r"[+%&~\^|\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0"
               r"\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D"
               r"\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038"
               r"\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012"
               r"\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65\uFF65]")
_ACRONYM_NEXT = ("(?:About|According|Additionally|After|An|A|As|At|But|Earlier|He|Her|Here|However|If|In|It|Last"
                 "|Many|More|Mr\\.|Ms\\.|Now|Once|One|Other|Our|She|Since|So|Some|Such|That|The|Their|Then|There"
                 "|These|They|This|We|When|While|What|Yet|You)")


def _acronym_next() -> str:
    # "[A]bout": the first letter is a (case-sensitive) class, the rest a caseless literal.
    words = _ACRONYM_NEXT[3:-1].split("|")
    return "(?:" + "|".join(w[0] + "(?i:" + w[1:] + ")" if len(w) > 1 else w for w in words) + f"|{_SGML})"


# ---------------------------------------------------------------------------------------------------------
# The rules, in the order of PTBLexer.flex: (r1, trailing context r2 or None, action)
# ---------------------------------------------------------------------------------------------------------

_RULES = [
    (r"(?i:c)\+\+", None, "text"),
    (r"(?i:c|f)#", None, "text"),
    (r"(?i:cannot)", None, ("pushback", 3)),
    (r"'(?i:twas)", None, ("pushback", 3)),
    (r"'(?i:tis)", None, ("pushback", 2)),
    (r"(?i:gonna|gotta|lemme|gimme|wanna)", None, ("pushback", 2)),
    (_SGML, None, "space"),
    (_SPMDASH, None, ("const", "--")),
    (_SPAMP, None, "amp"),
    (_SPPUNC, None, "text"),
    (_WORD, _REDAUX, "soft"),
    (_SWORD, _SREDAUX, "soft"),
    (_WORD, None, "soft"),
    (_APOWORD, None, "text"),
    (_APOWORD2, r"\p{L}", "text"),
    (_FULLURL, None, "text"),
    (_LIKELYURL, None, "text"),
    (_EMAIL, None, "text"),
    (_TWITTER, None, "text"),
    (_REDAUX, r"[^A-Za-z]", "quote_right"),
    (_SREDAUX, r"[^A-Za-z]", "quote_right"),
    (_DATE, None, "text"),
    (_NUMBER, None, "soft"),
    (_SUBSUPNUM, None, "text"),
    (_FRAC, None, "space"),  # <YyTraditionalTreebank3>{FRAC}; {FRACSTB3} is only for strictTreebank3
    (_FRAC2, None, "fraction"),
    (_TBSPEC, None, "amp"),
    (_THING3, None, "text"),
    (_DOLSIGN, None, "text"),
    (_DOLSIGN2, None, "currency"),
    (_ACRONYM, rf"{_SPACENLS}{_acronym_next()}{_SPACENL}", "acronym"),
    (_ABBREV3, rf"{_SPACENL}?\p{{Nd}}", "text"),
    (r"(?:(?i:pt)[eyEY]|(?i:co))\.", rf"{_SPACE}(?i:ltd|lim)", "text"),
    (_ABBREV1, _SENTEND, "redup"),
    (_ABBREV1, r"(?s:..)", "text"),
    (_ABBREV1, None, "redup"),
    (_ABBREV2, None, "text"),
    (_ABBREV4, _SPACE, "text"),
    (_ACRO, _SPACENL, "text"),
    (_TBSPEC2, _SPACENL, "text"),
    (_FILENAME, rf"(?:{_SPACENL}|[.?!,])", "text"),
    (rf"{_WORD}\.", _INSENTP, "soft"),
    (_PHONE, None, "phone"),
    (_DBLQUOT, r"[A-Za-z0-9$]", "quote_left"),
    (_DBLQUOT, None, "quote_right"),
    (r"\x7f", None, "skip"),
    (r"<|(?i:&lt;)", None, ("const", "<")),
    (r">|(?i:&gt;)", None, ("const", ">")),
    (_SMILEY, r"[^A-Za-z0-9]", "parens"),
    (_ASIANSMILEY, None, "parens"),
    (r"\{", None, ("const", "-LCB-")),
    (r"\}", None, ("const", "-RCB-")),
    (r"\[", None, ("const", "-LSB-")),
    (r"\]", None, ("const", "-RSB-")),
    (r"\(", None, ("const", "-LRB-")),
    (r"\)", None, ("const", "-RRB-")),
    (r"-+", None, "hyphens"),
    (_LDOTS, None, ("const", "...")),
    (r"@+|#+|_+", None, "text"),  # FNMARKS
    (r"\*+|(?:\\\*){1,3}", None, "text"),  # ASTS
    (_INSENTP, None, "text"),
    (r"[?!]+", None, "text"),
    (r"[.¡¿\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, "text"),
    (r"=", None, "text"),
    (r"/", None, "text"),
    (rf"{_HTHING}\.", _INSENTP, "soft"),
    (_HTHING, None, "soft"),
    (rf"{_THING}\.", _INSENTP, "text"),
    (_THING, None, "text"),
    (rf"{_THINGA}\.", _INSENTP, "amp"),
    (_THINGA, None, "amp"),
    (r"'", r"[A-Za-z][^ \t\n\r\u00A0]", "quote_left"),
    (_REDAUX, None, "quote_right"),
    (_SREDAUX, None, "quote_right"),
    (_QUOTES, None, "quote_right"),
    (r"<<|>>", None, "text"),
    (_MISCSYMBOL, None, "text"),
    (r"\x00|(?:" + _SPACE + r")+|[\u200B\u200E-\u200F\uFEFF]", None, "skip"),
    (_NEWLINE, None, "newline"),
    (r"(?i:&nbsp;)", None, "skip"),
    (r"[^\n\r\u000B\u000C\u0085\u2028\u2029]", None, "skip"),  # "." untokenizable: deleted (firstDelete)
]


@functools.lru_cache(maxsize=None)
def _compiled():
    full, first, second = [], [], []
    for r1, r2, _ in _RULES:
        full.append(regex.compile(f"(?:{r1})(?:{r2})" if r2 else f"(?:{r1})", regex.POSIX | regex.V0))
        first.append(regex.compile(f"(?:{r1})", regex.V0))
        second.append(regex.compile(f"(?:{r2})", regex.V0) if r2 else None)
    return full, first, second


@functools.lru_cache(maxsize=4096)
def _candidates(ch: str) -> tuple[int, ...]:
    """The rules whose match can begin with ``ch`` (a partial match of the single character)."""
    full, _, _ = _compiled()
    return tuple(i for i, p in enumerate(full) if p.match(ch, partial=True) is not None)


_LEFT_SINGLE = regex.compile("[\u0091\u2018\u201B\u2039]")
_RIGHT_SINGLE = regex.compile("[\u0092\u2019\u203A]")
_LEFT_DOUBLE = regex.compile("[\u0093\u201C\u00AB]")
_RIGHT_DOUBLE = regex.compile("[\u0094\u201D\u00BB]")
_SINGLE = regex.compile("(?i:&apos;)|'")
_DOUBLE = regex.compile('"|(?i:&quot;)')
_AMP = regex.compile("(?i:&amp;)")
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = regex.compile("[\u0080\u00A4\u20A0\u20AC]")


def _latex_quotes(tok: str, probably_left: bool) -> str:
    """PTBLexer ``latexQuotes``."""
    tok = _SINGLE.sub("`" if probably_left else "'", tok)
    tok = _DOUBLE.sub("``" if probably_left else "''", tok)
    tok = _LEFT_SINGLE.sub("`", tok)
    tok = _RIGHT_SINGLE.sub("'", tok)
    tok = _LEFT_DOUBLE.sub("``", tok)
    return _RIGHT_DOUBLE.sub("''", tok)


def _remove_soft_hyphens(tok: str) -> str:
    out = tok.replace("\u00AD", "")
    return out if out else "-"


def _is_space(ch: str) -> bool:
    return ch in " \t\u0085" or "\n" <= ch <= "\r"


def _split_context(i: int, text: str, pos: int, length: int) -> int:
    """Length of ``r1`` in a trailing-context match ``r1/r2`` of ``length`` characters (``r1`` as long as can be)."""
    _, first, second = _compiled()
    for k in range(length - 1, 0, -1):
        if first[i].fullmatch(text, pos, pos + k) and second[i].fullmatch(text, pos + k, pos + length):
            return k
    raise AssertionError("no split of a trailing-context match")  # pragma: no cover


def _step(text: str, pos: int) -> tuple[list[str], int]:
    """One PTBLexer.next() from ``pos``: ``(tokens, new position)`` (``"*NL*"`` for a newline, as with
    ``tokenizeNLs``; no token for skipped text)."""
    full, _, _ = _compiled()
    tokens = []
    best, best_len = -1, 0
    for i in _candidates(text[pos]):
        m = full[i].match(text, pos)
        if m is not None and m.end() - pos > best_len:
            best, best_len = i, m.end() - pos
    _, r2, action = _RULES[best]
    length = _split_context(best, text, pos, best_len) if r2 else best_len
    tok = text[pos:pos + length]
    if isinstance(action, tuple) and action[0] == "pushback":
        length -= action[1]
        tokens.append(text[pos:pos + length])
    elif isinstance(action, tuple):
        tokens.append(action[1])
    elif action == "text":
        tokens.append(tok)
    elif action == "soft":
        tokens.append(_remove_soft_hyphens(tok))
    elif action == "space":
        tokens.append(tok.replace(" ", "\u00A0"))
    elif action == "amp":
        tokens.append(_AMP.sub("&", tok))
    elif action == "quote_left":
        tokens.append(_latex_quotes(tok, True))
    elif action == "quote_right":
        tokens.append(_latex_quotes(tok, False))
    elif action == "fraction":
        tokens.append(_FRACTIONS.get(tok, tok))
    elif action == "currency":
        tokens.append(_CURRENCY.sub("$", tok.replace("\u00A2", "cents").replace("\u00A3", "#")))
    elif action == "phone":
        tokens.append(tok.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-"))
    elif action == "parens":
        tokens.append(tok.replace("(", "-LRB-").replace(")", "-RRB-"))
    elif action == "hyphens":
        tokens.append("--" if 3 <= length <= 4 else tok)
    elif action == "newline":
        tokens.append("*NL*")
    elif action == "redup":  # the abbreviation with its period, then the period again
        tokens.append(tok)
        length -= 1
    elif action == "acronym":
        while length and _is_space(tok[length - 1]):
            length -= 1
        if length == 2:  # "I." -> "I", then "."
            length = 1
            tokens.append(text[pos:pos + 1])
        else:  # "U.S." and then "." again
            tokens.append(text[pos:pos + length])
            length -= 1
    # "skip": nothing
    return tokens, pos + length


def _to_utf16_units(text: str) -> str:
    """Java strings are UTF-16: a character outside the BMP becomes its two surrogate code units."""
    if all(ord(c) < 0x10000 for c in text):
        return text
    out = []
    for c in text:
        o = ord(c)
        if o < 0x10000:
            out.append(c)
        else:
            o -= 0x10000
            out.append(chr(0xD800 + (o >> 10)) + chr(0xDC00 + (o & 0x3FF)))
    return "".join(out)


def _from_utf16_units(text: str) -> str:
    if all(ord(c) < 0xD800 or ord(c) > 0xDFFF for c in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_SIMPLE_WORD = regex.compile(r"[A-Za-z]+(?=[ \t\n]|$)")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _lex_lines(text: str, stop: int | None = None) -> list[list[str]]:
    """The jar's ``-preserveLines -lowerCase`` output for ``text``: one token list per output line. With
    ``stop``, lexing ends at the first token boundary at or after ``stop`` (the rest is only look-ahead)."""
    text = _to_utf16_units(text)
    lines, tokens = [], []
    pos, n = 0, len(text)
    stop = n if stop is None else stop
    while pos < stop:
        # Fast path, exact: a run of ASCII letters that starts after a space or line break and ends before one
        # (or the end) is one WORD token: no rule that begins with a letter can match more than the run without a
        # character other than a letter in it (".", "'", "$", "@", "/", ...), but the assimilations split below.
        if pos == 0 or text[pos - 1] in " \t\n":
            m = _SIMPLE_WORD.match(text, pos)
            if m is not None and m.group(0).lower() not in _ASSIMILATIONS:
                tokens.append(m.group(0))
                pos = m.end()
                while pos < n and text[pos] in " \t":  # SPACES: skipped
                    pos += 1
                continue
        new_tokens, pos = _step(text, pos)
        for tok in new_tokens:
            if tok == "*NL*":
                lines.append(tokens)
                tokens = []
            else:
                tokens.append(tok)
    lines.append(tokens)
    return [[_from_utf16_units(_java_lower(t)) for t in line] for line in lines]


def _in_java_word(tok: str, j: int) -> bool:
    """Whether ``tok[j]`` is inside a word as Java's legacy word BreakIterator sees words: letters, digits and
    marks; mid-word punctuation (dashes, connectors, quotes, period, soft hyphen) only between two letters."""
    ch = tok[j]
    if ch.isalnum() or unicodedata.category(ch) in ("Mn", "Mc"):
        return True
    if ch in "-'\".\u00ad\u2027" or unicodedata.category(ch) in ("Pd", "Pc"):
        return 0 < j < len(tok) - 1 and tok[j - 1].isalpha() and tok[j + 1].isalpha()
    return False


def _java_lower(tok: str) -> str:
    """``String.toLowerCase(Locale.ENGLISH)``: as ``str.lower()`` but for Java's final-sigma rule
    (``ConditionalSpecialCasing.isFinalCased``: a cased letter before the capital sigma and none after it,
    both within its word as Java's word BreakIterator sees words)."""
    low = tok.lower()
    if "\u03a3" not in tok:
        return low
    chars = list(low)
    for i, c in enumerate(tok):
        if c != "\u03a3":
            continue
        before = False
        j = i - 1
        while j >= 0 and _in_java_word(tok, j):
            if tok[j].lower() != tok[j].upper():
                before = True
                break
            j -= 1
        after = False
        j = i + 1
        while j < len(tok) and _in_java_word(tok, j):
            if tok[j].lower() != tok[j].upper():
                after = True
                break
            j += 1
        chars[i] = "\u03c2" if before and not after else "\u03c3"
    return "".join(chars)


def ptb_tokens(text: str) -> list[str]:
    """The tokens the jar prints for ``text`` alone (``-lowerCase``), before pycocoevalcap's punctuation filter.
    Line breaks separate tokens."""
    return [t for line in _lex_lines(text) for t in line]


def ptb_tokenize_lines(texts) -> list[str]:
    """pycocoevalcap ``PTBTokenizer.tokenize`` on a list of captions, exactly: the captions (``"\n"`` -> ``" "``)
    joined by newlines into one input, tokenised by the jar, the output lines filtered by ``PTB_PUNCTUATIONS``.

    One input matters: a rule may look past the end of a caption into the next one (an acronym such as ``"S."``
    keeps its period unless the next line begins with ``"A "``, ``"The "``, ...). As in pycocoevalcap, other line
    breaks inside a caption (``\r``, U+2028, ...) start a new output line, and line ``i`` goes to caption ``i``."""
    texts = [t.replace("\n", " ") for t in texts]
    lines = []
    for i, text in enumerate(texts):
        # Lex each caption on its own (fast), with the next captions as look-ahead: no token spans a line break.
        ahead = []
        for following in texts[i + 1:i + 4]:
            ahead.append(following)
            if following.strip(" \t"):
                break
        more = i + 1 + len(ahead) < len(texts)  # then the look-ahead's last line ends with a line break too
        context = "\n".join([text] + ahead) + ("\n" if more else "")
        stop = len(_to_utf16_units(text)) + (1 if ahead else 0)
        caption_lines = _lex_lines(context, stop)
        if ahead and len(caption_lines) > 1 and not caption_lines[-1]:
            caption_lines.pop()  # the line the joining "\n" opened
        lines.extend(caption_lines)
    lines += [[]] * (len(texts) - len(lines))
    return [_filter(line) for line in lines[:len(texts)]]


def _filter(tokens: list[str]) -> str:
    """ptbtokenizer.py on one output line: ``line.rstrip().split(' ')`` (``rstrip`` also strips a trailing no-break
    space that a URL token may end with), the ``PTB_PUNCTUATIONS`` dropped, joined by spaces."""
    return " ".join(w for w in " ".join(tokens).rstrip().split(" ") if w not in PTB_PUNCTUATIONS)


def ptb_tokenize(text: str) -> str:
    """pycocoevalcap's ``PTBTokenizer`` for one caption: the Stanford jar's tokens (``-preserveLines
    -lowerCase``; ``"\\n"`` replaced by a space first, as ptbtokenizer.py does), without ``PTB_PUNCTUATIONS``,
    joined by single spaces."""
    return _filter(ptb_tokens(text.replace("\n", " ")))
