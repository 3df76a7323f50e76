//! `#[agent(topic = T, sends = [..], tables = [..])]` on an `async fn(Stream<K, V>)`.
//!
//! Parse → validate (every error collected, spanned on the user's token) → emit a function
//! named like the user's, returning the agent's `AgentSpec` (an `Agent`). On error, a function
//! of that name that still registers is emitted next to the errors, with the user's function
//! inside it, so that the errors are the only ones and IDEs keep working.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, ReturnType};

use crate::attrs::{parse_args, Errors};

const KEYS: &str = "`topic`, `sends` and `tables`";

struct Args {
    topic: Option<Expr>,
    sends: Vec<Expr>,
    tables: Vec<Expr>,
}

fn list(value: Expr) -> Vec<Expr> {
    match value {
        Expr::Array(array) => array.elems.into_iter().collect(),
        single => vec![single],
    }
}

fn parse(args: TokenStream, errors: &mut Errors) -> Args {
    let mut out = Args {
        topic: None,
        sends: Vec::new(),
        tables: Vec::new(),
    };
    let parsed = match parse_args(args.clone()) {
        Ok(parsed) => parsed,
        Err(error) => {
            errors.push(error);
            return out;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    for arg in parsed {
        let key = arg.key.to_string();
        if seen.contains(&key) {
            errors.spanned(&arg.key, format!("`{key}` is set multiple times; give it once"));
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            "topic" => out.topic = Some(arg.value),
            "sends" => out.sends = list(arg.value),
            "tables" => out.tables = list(arg.value),
            _ => errors.spanned(
                &arg.key,
                format!("unknown key `{key}` in #[agent]; the keys are {KEYS}"),
            ),
        }
    }
    if out.topic.is_none() {
        let span = if args.is_empty() {
            Span::call_site()
        } else {
            args.span()
        };
        errors.at(
            span,
            "#[agent] needs the topic it reads: `#[agent(topic = MY_TOPIC)]` (a `Topic` constant) or `#[agent(topic = \"name\")]`",
        );
    }
    out
}

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            errors.at(
                Span::call_site(),
                "#[agent] goes on an `async fn` that takes its stream: `async fn name(mut s: Stream<K, V>)`",
            );
            let errors = errors.into_compile_errors();
            return quote! { #item #errors };
        }
    };
    let args = parse(args, &mut errors);
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "#[agent] needs an `async fn`: write `async fn`");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "an agent cannot be generic: its stream's types come from its topic",
        );
    }
    let mut stream = None;
    for (index, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(receiver) => {
                errors.spanned(receiver, "an agent is a free function; it cannot take `self`");
            }
            FnArg::Typed(typed) if index == 0 => stream = Some(typed.clone()),
            FnArg::Typed(typed) => errors.spanned(
                typed,
                "an agent takes one parameter, its `Stream<K, V>`; reach other topics and tables \
                 through their constants and list them in `sends = [..]` and `tables = [..]`",
            ),
        }
    }
    if sig.inputs.is_empty() {
        errors.spanned(
            &sig.ident,
            "an agent takes its stream as its parameter: `async fn name(mut hits: Stream<K, V>)`",
        );
    }
    if !errors.is_empty() {
        // An agent function the app can still register (so that `App::agent(name)` adds no
        // error of its own), with the user's function inside (made `async`, so that its body
        // is checked as it will be, and IDEs keep working), unless it takes `self`.
        let has_receiver = sig.inputs.iter().any(|input| matches!(input, FnArg::Receiver(_)));
        let body = (!has_receiver).then(|| {
            let mut inner = function.clone();
            inner.sig.ident = format_ident!("__streams_agent_{}", sig.ident);
            inner.sig.asyncness = Some(Default::default());
            inner.vis = syn::Visibility::Inherited;
            inner.attrs.clear();
            quote! {
                #[allow(dead_code, unused)]
                #inner
            }
        });
        let vis = &function.vis;
        let name = &sig.ident;
        let attrs = &function.attrs;
        let errors = errors.into_compile_errors();
        return quote! {
            #(#attrs)*
            #vis fn #name() -> ::streams_core::__private::AgentSpec {
                #body
                ::core::unreachable!("this agent has compile errors")
            }
            #errors
        };
    }
    let Some(stream) = stream else {
        return item;
    };
    let Some(topic) = args.topic else {
        return item;
    };
    let stream_ty = &stream.ty;
    let name = &sig.ident;
    let name_text = name.to_string();
    let vis = &function.vis;
    let docs: Vec<_> = function.attrs.iter().filter(|a| a.path().is_ident("doc")).collect();
    let other_attrs: Vec<_> = function.attrs.iter().filter(|a| !a.path().is_ident("doc")).collect();
    let inner = format_ident!("__streams_agent_{}", name);
    let inputs = &sig.inputs;
    let output = match &sig.output {
        ReturnType::Default => quote!(),
        ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
    };
    let body = &function.block;
    let source = match &topic {
        Expr::Lit(ExprLit {
            lit: Lit::Str(name), ..
        }) => quote_spanned! {name.span()=>
            ::streams_core::__private::source_of::<#stream_ty>(&::streams_core::__private::Topic::new(#name))
        },
        expr => quote_spanned! {expr.span()=>
            ::streams_core::__private::source_of::<#stream_ty>(&#expr)
        },
    };
    let sends = args.sends.iter().map(|expr| {
        quote_spanned! {expr.span()=> ::streams_core::__private::Topic::spec(&#expr) }
    });
    // A table is partitioned like the stream that updates it: its key type must be the
    // stream's key type.
    let tables = args.tables.iter().map(|expr| {
        quote_spanned! {expr.span()=> ::streams_core::__private::table_of::<#stream_ty, _>(&#expr) }
    });
    // Errors about the stream's type land on the stream's type.
    let spec = quote_spanned! {stream_ty.span()=>
        ::streams_core::__private::AgentSpec::new::<#stream_ty, _, _, _>(
            #name_text,
            #source,
            ::std::vec![#(#sends),*],
            ::std::vec![#(#tables),*],
            #inner,
        )
    };
    // The agent is a function returning its spec: `App::agent(name)` takes it, and the
    // stream parameter may share the function's name (a function can be shadowed).
    quote! {
        #(#docs)*
        #vis fn #name() -> ::streams_core::__private::AgentSpec {
            #(#other_attrs)*
            async fn #inner(#inputs) #output #body

            #spec
        }
    }
}
