"""Per-language sentences for the synthetic corpus: numbers, weekdays, dates and common words.

Each language has a small lexicon in its own script (numbers one to ten, weekdays, months and 15
common words). A sentence is a random sequence of lexicon tokens, so the transcript is exactly
the words espeak speaks (no digits, no punctuation), stored in Unicode NFC. The sentences are not
grammatical; they give ASR a language-specific vocabulary and give LID a language-specific sound.
"""
from __future__ import annotations

import dataclasses
import unicodedata
import zlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Tokens of one language; a token may hold several words ("thứ hai")."""
  numbers: tuple[str, ...]  # one..ten
  weekdays: tuple[str, ...]  # Monday..Sunday
  months: tuple[str, ...]  # January..December
  words: tuple[str, ...]  # water, house, city, friend, book, school, train, morning, evening,
  #                        today, tomorrow, good, big, small, new
  separator: str = " "  # between tokens; "" for scripts written without spaces
  month_first: bool = False  # a date reads "<month> <day>" rather than "<day> <month>"

  def tokens(self) -> tuple[str, ...]:
    """Every token of the lexicon, in category order."""
    return self.numbers + self.weekdays + self.months + self.words


def _lexicon(numbers: str, weekdays: str, months: str, words: str, **kwargs) -> Lexicon:
  split = lambda s: tuple(t.strip() for t in s.split(","))
  lexicon = Lexicon(split(numbers), split(weekdays), split(months), split(words), **kwargs)
  sizes = (len(lexicon.numbers), len(lexicon.weekdays), len(lexicon.months), len(lexicon.words))
  if sizes != (10, 7, 12, 15):
    raise ValueError(f"lexicon {lexicon.numbers[:2]}: expected 10 numbers, 7 weekdays, 12 months "
                     f"and 15 words, found {sizes}")
  return lexicon


LEXICONS: dict[str, Lexicon] = {
    "en": _lexicon(
        "one, two, three, four, five, six, seven, eight, nine, ten",
        "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday",
        "January, February, March, April, May, June, July, August, September, October, "
        "November, December",
        "water, house, city, friend, book, school, train, morning, evening, today, tomorrow, "
        "good, big, small, new", month_first=True),
    "de": _lexicon(
        "eins, zwei, drei, vier, fünf, sechs, sieben, acht, neun, zehn",
        "Montag, Dienstag, Mittwoch, Donnerstag, Freitag, Samstag, Sonntag",
        "Januar, Februar, März, April, Mai, Juni, Juli, August, September, Oktober, November, "
        "Dezember",
        "Wasser, Haus, Stadt, Freund, Buch, Schule, Zug, Vormittag, Abend, heute, morgen, gut, "
        "groß, klein, neu"),
    "fr": _lexicon(
        "un, deux, trois, quatre, cinq, six, sept, huit, neuf, dix",
        "lundi, mardi, mercredi, jeudi, vendredi, samedi, dimanche",
        "janvier, février, mars, avril, mai, juin, juillet, août, septembre, octobre, novembre, "
        "décembre",
        "eau, maison, ville, ami, livre, école, train, matin, soir, aujourd'hui, demain, bon, "
        "grand, petit, nouveau"),
    "es": _lexicon(
        "uno, dos, tres, cuatro, cinco, seis, siete, ocho, nueve, diez",
        "lunes, martes, miércoles, jueves, viernes, sábado, domingo",
        "enero, febrero, marzo, abril, mayo, junio, julio, agosto, septiembre, octubre, "
        "noviembre, diciembre",
        "agua, casa, ciudad, amigo, libro, escuela, tren, noche, tarde, hoy, mañana, bueno, "
        "grande, pequeño, nuevo"),
    "it": _lexicon(
        "uno, due, tre, quattro, cinque, sei, sette, otto, nove, dieci",
        "lunedì, martedì, mercoledì, giovedì, venerdì, sabato, domenica",
        "gennaio, febbraio, marzo, aprile, maggio, giugno, luglio, agosto, settembre, ottobre, "
        "novembre, dicembre",
        "acqua, casa, città, amico, libro, scuola, treno, mattina, sera, oggi, domani, buono, "
        "grande, piccolo, nuovo"),
    "pt": _lexicon(
        "um, dois, três, quatro, cinco, seis, sete, oito, nove, dez",
        "segunda-feira, terça-feira, quarta-feira, quinta-feira, sexta-feira, sábado, domingo",
        "janeiro, fevereiro, março, abril, maio, junho, julho, agosto, setembro, outubro, "
        "novembro, dezembro",
        "água, casa, cidade, amigo, livro, escola, comboio, manhã, noite, hoje, amanhã, bom, "
        "grande, pequeno, novo"),
    "nl": _lexicon(
        "een, twee, drie, vier, vijf, zes, zeven, acht, negen, tien",
        "maandag, dinsdag, woensdag, donderdag, vrijdag, zaterdag, zondag",
        "januari, februari, maart, april, mei, juni, juli, augustus, september, oktober, "
        "november, december",
        "water, huis, stad, vriend, boek, school, trein, ochtend, avond, vandaag, morgen, goed, "
        "groot, klein, nieuw"),
    "pl": _lexicon(
        "jeden, dwa, trzy, cztery, pięć, sześć, siedem, osiem, dziewięć, dziesięć",
        "poniedziałek, wtorek, środa, czwartek, piątek, sobota, niedziela",
        "styczeń, luty, marzec, kwiecień, maj, czerwiec, lipiec, sierpień, wrzesień, "
        "październik, listopad, grudzień",
        "woda, dom, miasto, przyjaciel, książka, szkoła, pociąg, rano, wieczór, dzisiaj, jutro, "
        "dobry, duży, mały, nowy"),
    "ru": _lexicon(
        "один, два, три, четыре, пять, шесть, семь, восемь, девять, десять",
        "понедельник, вторник, среда, четверг, пятница, суббота, воскресенье",
        "январь, февраль, март, апрель, май, июнь, июль, август, сентябрь, октябрь, ноябрь, "
        "декабрь",
        "вода, дом, город, друг, книга, школа, поезд, утро, вечер, сегодня, завтра, хороший, "
        "большой, маленький, новый"),
    "uk": _lexicon(
        "один, два, три, чотири, п'ять, шість, сім, вісім, дев'ять, десять",
        "понеділок, вівторок, середа, четвер, п'ятниця, субота, неділя",
        "січень, лютий, березень, квітень, травень, червень, липень, серпень, вересень, жовтень, "
        "листопад, грудень",
        "вода, дім, місто, друг, книга, школа, потяг, ранок, вечір, сьогодні, завтра, добрий, "
        "великий, малий, новий"),
    "cs": _lexicon(
        "jedna, dva, tři, čtyři, pět, šest, sedm, osm, devět, deset",
        "pondělí, úterý, středa, čtvrtek, pátek, sobota, neděle",
        "leden, únor, březen, duben, květen, červen, červenec, srpen, září, říjen, listopad, "
        "prosinec",
        "voda, dům, město, přítel, kniha, škola, vlak, ráno, večer, dnes, zítra, dobrý, velký, "
        "malý, nový"),
    "el": _lexicon(
        "ένα, δύο, τρία, τέσσερα, πέντε, έξι, επτά, οκτώ, εννέα, δέκα",
        "Δευτέρα, Τρίτη, Τετάρτη, Πέμπτη, Παρασκευή, Σάββατο, Κυριακή",
        "Ιανουάριος, Φεβρουάριος, Μάρτιος, Απρίλιος, Μάιος, Ιούνιος, Ιούλιος, Αύγουστος, "
        "Σεπτέμβριος, Οκτώβριος, Νοέμβριος, Δεκέμβριος",
        "νερό, σπίτι, πόλη, φίλος, βιβλίο, σχολείο, τρένο, πρωί, βράδυ, σήμερα, αύριο, καλός, "
        "μεγάλος, μικρός, νέος"),
    "tr": _lexicon(
        "bir, iki, üç, dört, beş, altı, yedi, sekiz, dokuz, on",
        "Pazartesi, Salı, Çarşamba, Perşembe, Cuma, Cumartesi, Pazar",
        "Ocak, Şubat, Mart, Nisan, Mayıs, Haziran, Temmuz, Ağustos, Eylül, Ekim, Kasım, Aralık",
        "su, ev, şehir, arkadaş, kitap, okul, tren, sabah, akşam, bugün, yarın, iyi, büyük, "
        "küçük, yeni"),
    "fi": _lexicon(
        "yksi, kaksi, kolme, neljä, viisi, kuusi, seitsemän, kahdeksan, yhdeksän, kymmenen",
        "maanantai, tiistai, keskiviikko, torstai, perjantai, lauantai, sunnuntai",
        "tammikuu, helmikuu, maaliskuu, huhtikuu, toukokuu, kesäkuu, heinäkuu, elokuu, syyskuu, "
        "lokakuu, marraskuu, joulukuu",
        "vesi, talo, kaupunki, ystävä, kirja, koulu, juna, aamu, ilta, tänään, huomenna, hyvä, "
        "iso, pieni, uusi"),
    "hu": _lexicon(
        "egy, kettő, három, négy, öt, hat, hét, nyolc, kilenc, tíz",
        "hétfő, kedd, szerda, csütörtök, péntek, szombat, vasárnap",
        "január, február, március, április, május, június, július, augusztus, szeptember, "
        "október, november, december",
        "víz, ház, város, barát, könyv, iskola, vonat, reggel, este, ma, holnap, jó, nagy, kicsi, "
        "új", month_first=True),
    "ar": _lexicon(
        "واحد, اثنان, ثلاثة, أربعة, خمسة, ستة, سبعة, ثمانية, تسعة, عشرة",
        "الاثنين, الثلاثاء, الأربعاء, الخميس, الجمعة, السبت, الأحد",
        "يناير, فبراير, مارس, أبريل, مايو, يونيو, يوليو, أغسطس, سبتمبر, أكتوبر, نوفمبر, ديسمبر",
        "ماء, بيت, مدينة, صديق, كتاب, مدرسة, قطار, صباح, مساء, اليوم, غدا, جيد, كبير, صغير, "
        "جديد"),
    "hi": _lexicon(
        "एक, दो, तीन, चार, पाँच, छह, सात, आठ, नौ, दस",
        "सोमवार, मंगलवार, बुधवार, गुरुवार, शुक्रवार, शनिवार, रविवार",
        "जनवरी, फ़रवरी, मार्च, अप्रैल, मई, जून, जुलाई, अगस्त, सितंबर, अक्टूबर, नवंबर, दिसंबर",
        "पानी, घर, शहर, दोस्त, किताब, स्कूल, रेलगाड़ी, सुबह, शाम, आज, कल, अच्छा, बड़ा, छोटा, "
        "नया"),
    "id": _lexicon(
        "satu, dua, tiga, empat, lima, enam, tujuh, delapan, sembilan, sepuluh",
        "Senin, Selasa, Rabu, Kamis, Jumat, Sabtu, Minggu",
        "Januari, Februari, Maret, April, Mei, Juni, Juli, Agustus, September, Oktober, "
        "November, Desember",
        "air, rumah, kota, teman, buku, sekolah, kereta, pagi, malam, hari ini, besok, baik, "
        "besar, kecil, baru"),
    "vi": _lexicon(
        "một, hai, ba, bốn, năm, sáu, bảy, tám, chín, mười",
        "thứ hai, thứ ba, thứ tư, thứ năm, thứ sáu, thứ bảy, chủ nhật",
        "tháng một, tháng hai, tháng ba, tháng tư, tháng năm, tháng sáu, tháng bảy, tháng tám, "
        "tháng chín, tháng mười, tháng mười một, tháng mười hai",
        "nước, nhà, thành phố, bạn, sách, trường, tàu hỏa, buổi sáng, buổi tối, hôm nay, "
        "ngày mai, tốt, lớn, nhỏ, mới"),
    "cmn": _lexicon(
        "一, 二, 三, 四, 五, 六, 七, 八, 九, 十",
        "星期一, 星期二, 星期三, 星期四, 星期五, 星期六, 星期天",
        "一月, 二月, 三月, 四月, 五月, 六月, 七月, 八月, 九月, 十月, 十一月, 十二月",
        "水, 房子, 城市, 朋友, 书, 学校, 火车, 早上, 晚上, 今天, 明天, 好, 大, 小, 新",
        separator="", month_first=True),
    "ja": _lexicon(  # kana only: espeak-ng's Japanese voice does not read kanji
        "いち, に, さん, よん, ご, ろく, なな, はち, きゅう, じゅう",
        "げつようび, かようび, すいようび, もくようび, きんようび, どようび, にちようび",
        "いちがつ, にがつ, さんがつ, しがつ, ごがつ, ろくがつ, しちがつ, はちがつ, くがつ, "
        "じゅうがつ, じゅういちがつ, じゅうにがつ",
        "みず, いえ, まち, ともだち, ほん, がっこう, でんしゃ, あさ, よる, きょう, あした, いい, "
        "おおきい, ちいさい, あたらしい", separator="", month_first=True),
    "ko": _lexicon(
        "하나, 둘, 셋, 넷, 다섯, 여섯, 일곱, 여덟, 아홉, 열",
        "월요일, 화요일, 수요일, 목요일, 금요일, 토요일, 일요일",
        "일월, 이월, 삼월, 사월, 오월, 유월, 칠월, 팔월, 구월, 시월, 십일월, 십이월",
        "물, 집, 도시, 친구, 책, 학교, 기차, 아침, 저녁, 오늘, 내일, 좋은, 큰, 작은, 새",
        month_first=True),
    "bn": _lexicon(
        "এক, দুই, তিন, চার, পাঁচ, ছয়, সাত, আট, নয়, দশ",
        "সোমবার, মঙ্গলবার, বুধবার, বৃহস্পতিবার, শুক্রবার, শনিবার, রবিবার",
        "জানুয়ারি, ফেব্রুয়ারি, মার্চ, এপ্রিল, মে, জুন, জুলাই, আগস্ট, সেপ্টেম্বর, অক্টোবর, "
        "নভেম্বর, ডিসেম্বর",
        "জল, বাড়ি, শহর, বন্ধু, বই, স্কুল, ট্রেন, সকাল, সন্ধ্যা, আজ, কাল, ভালো, বড়, ছোট, নতুন"),
    "ta": _lexicon(
        "ஒன்று, இரண்டு, மூன்று, நான்கு, ஐந்து, ஆறு, ஏழு, எட்டு, ஒன்பது, பத்து",
        "திங்கள், செவ்வாய், புதன், வியாழன், வெள்ளி, சனி, ஞாயிறு",
        "ஜனவரி, பிப்ரவரி, மார்ச், ஏப்ரல், மே, ஜூன், ஜூலை, ஆகஸ்ட், செப்டம்பர், அக்டோபர், நவம்பர், "
        "டிசம்பர்",
        "தண்ணீர், வீடு, நகரம், நண்பன், புத்தகம், பள்ளி, ரயில், காலை, மாலை, இன்று, நாளை, நல்ல, "
        "பெரிய, சிறிய, புதிய"),
    "sw": _lexicon(
        "moja, mbili, tatu, nne, tano, sita, saba, nane, tisa, kumi",
        "Jumatatu, Jumanne, Jumatano, Alhamisi, Ijumaa, Jumamosi, Jumapili",
        "Januari, Februari, Machi, Aprili, Mei, Juni, Julai, Agosti, Septemba, Oktoba, Novemba, "
        "Desemba",
        "maji, nyumba, mji, rafiki, kitabu, shule, treni, asubuhi, jioni, leo, kesho, nzuri, "
        "kubwa, ndogo, mpya"),
}

# Token kinds and their probabilities; a date is two tokens (day number and month).
_KINDS = ("word", "number", "weekday", "date")
_KIND_PROBS = (0.55, 0.2, 0.1, 0.15)


def language_seed(seed: int, language: str, stream: int) -> np.random.SeedSequence:
  """A seed sequence for one (build seed, language, purpose) triple; stable across processes."""
  return np.random.SeedSequence([seed, zlib.crc32(language.encode("utf-8")), stream])


def sentence(lexicon: Lexicon, rng: np.random.Generator, num_tokens: int) -> str:
  """A random sentence of `num_tokens` lexicon tokens (a date counts as two), NFC."""
  tokens: list[str] = []
  while len(tokens) < num_tokens:
    kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_PROBS)]
    if kind == "date" and num_tokens - len(tokens) >= 2:
      day = lexicon.numbers[rng.integers(len(lexicon.numbers))]
      month = lexicon.months[rng.integers(len(lexicon.months))]
      tokens += [month, day] if lexicon.month_first else [day, month]
    elif kind == "number":
      tokens.append(lexicon.numbers[rng.integers(len(lexicon.numbers))])
    elif kind == "weekday":
      tokens.append(lexicon.weekdays[rng.integers(len(lexicon.weekdays))])
    else:
      tokens.append(lexicon.words[rng.integers(len(lexicon.words))])
  return unicodedata.normalize("NFC", lexicon.separator.join(tokens))


def unique_sentence(language: str, rng: np.random.Generator, num_tokens: int, seen: set[str],
                    max_retries: int = 1000) -> str:
  """A sentence of `num_tokens` tokens in `language` that is not in `seen`; adds it to `seen`."""
  if language not in LEXICONS:
    raise KeyError(f"no lexicon for language {language!r}; texts.LEXICONS has "
                   f"{sorted(LEXICONS)}")
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1, found {num_tokens}")
  for _ in range(max_retries):
    text = sentence(LEXICONS[language], rng, num_tokens)
    if text not in seen:
      seen.add(text)
      return text
  raise RuntimeError(f"{language}: no new sentence of {num_tokens} tokens in {max_retries} tries "
                     f"after {len(seen)} sentences; use longer sentences")


# English renderings (the synthetic translation task): every lexicon token has the English token
# of the same category and index; a date reads "<month> <day>" in English.

_SENTENCE_PUNCTUATION = ".,;:!?¿¡。、，．！？"


class UnparsableTranscript(ValueError):
  """A transcript that is not a sequence of its language's lexicon tokens, or that has several
  readings with different English renderings (possible only where the grammar is ambiguous)."""


def _normalise_for_parse(text: str, separator: str) -> str:
  text = unicodedata.normalize("NFC", text)
  text = "".join(" " if c in _SENTENCE_PUNCTUATION else c for c in text)
  text = " ".join(text.split())
  return text.replace(" ", "") if separator == "" else text


def english_rendering(language: str, text: str) -> str:
  """The English rendering of a synthetic transcript in `language`, token by token.

  Sentences joined into one utterance (with the separator, spaces or sentence punctuation) parse
  the same way. Raises UnparsableTranscript when the text is not lexicon tokens of the language,
  or when two readings give different English (e.g. "十一月" is November, or ten + January in a
  date); callers leave such utterances out of the translation task.
  """
  if language not in LEXICONS:
    raise KeyError(f"no lexicon for language {language!r}; texts.LEXICONS has {sorted(LEXICONS)}")
  lex, en = LEXICONS[language], LEXICONS["en"]
  nfc = lambda s: unicodedata.normalize("NFC", s)
  sep = lex.separator
  text = _normalise_for_parse(text, sep)
  single = [(nfc(t), e) for cat, en_cat in ((lex.numbers, en.numbers), (lex.weekdays, en.weekdays),
                                            (lex.words, en.words)) for t, e in zip(cat, en_cat)]
  numbers = [(nfc(t), e) for t, e in zip(lex.numbers, en.numbers)]
  months = [(nfc(t), e) for t, e in zip(lex.months, en.months)]
  n = len(text)

  def after(i: int, surface: str) -> int | None:
    """Position after `surface` at i (and its separator), or None if it does not end a token."""
    if not text.startswith(surface, i):
      return None
    j = i + len(surface)
    if j == n:
      return j
    if sep == "":
      return j
    return j + len(sep) if text.startswith(sep, j) else None

  memo: dict[int, set[tuple[str, ...]]] = {}

  def readings(i: int) -> set[tuple[str, ...]]:
    """Up to 2 distinct English renderings of text[i:]."""
    if i == n:
      return {()}
    if i in memo:
      return memo[i]
    out: set[tuple[str, ...]] = set()
    options = [((e,), j) for t, e in single if (j := after(i, t)) is not None]
    first, second = (months, numbers) if lex.month_first else (numbers, months)
    for t1, e1 in first:
      j = after(i, t1)
      if j is None or j == n:
        continue
      for t2, e2 in second:
        k = after(j, t2)
        if k is not None:
          month, day = (e1, e2) if lex.month_first else (e2, e1)
          options.append(((month, day), k))
    for english, j in options:
      for rest in readings(j):
        out.add(english + rest)
        if len(out) > 1:
          break
      if len(out) > 1:
        break
    memo[i] = out
    return out

  import sys
  limit = sys.getrecursionlimit()
  sys.setrecursionlimit(max(limit, 4 * n + 100))
  try:
    found = readings(0)
  finally:
    sys.setrecursionlimit(limit)
  if not found:
    raise UnparsableTranscript(f"{language}: {text!r} is not a sequence of lexicon tokens")
  if len(found) > 1:
    raise UnparsableTranscript(f"{language}: {text!r} has several readings, e.g. "
                               f"{' | '.join(' '.join(r) for r in sorted(found))}")
  return " ".join(found.pop())
